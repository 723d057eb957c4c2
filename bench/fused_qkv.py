"""Fused QKV projections, measured: diffusers' ``fuse_qkv_projections`` on the SD1.5-shaped UNet.

One CFG step (batch 2) at the given size, plain and fused alternated in one process, the best of 5 each
round, the median ratio over the rounds.
Easel does not fuse: this script is the number behind that choice (see bench/RESULTS.md).

    python bench/fused_qkv.py [--size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.sd15_random import materialise, sd1_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from diffusers import UNet2DConditionModel

    torch.set_grad_enabled(False)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd1_config("unet"))
    materialise(unet, 0).eval()
    side = args.size // 8
    latents, timestep, text = torch.randn(2, 4, side, side), torch.tensor([500, 500]), torch.randn(2, 77, 768)

    def step_seconds(runs: int = 5) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            unet(latents, timestep, text)
            times.append(time.perf_counter() - start)
        return min(times)

    step_seconds(1)  # warm-up
    ratios = []
    for index in range(args.rounds):
        plain = step_seconds()
        unet.fuse_qkv_projections()
        fused = step_seconds()
        unet.unfuse_qkv_projections()
        ratios.append(fused / plain)
        print(f"round {index}: plain {1000 * plain:.0f} ms, fused {1000 * fused:.0f} ms ({ratios[-1]:.3f})")
    print(f"median ratio fused / plain: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
