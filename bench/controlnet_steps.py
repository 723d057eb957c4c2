"""Per-step cost of ControlNet units: one UNet step (CFG batch of 2) with 0, 1 and 2 active units.

SD1.5-shaped random UNet and ControlNets (the published SD1.5 ControlNet shape, from Easel's bundled config),
applied through Easel's own hook (``ControlPlan.session``), in one process; the three cases alternate
round by round and the medians are compared, so machine noise hits them alike.

    python bench/controlnet_steps.py [--size 256] [--rounds 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "bench"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from sd15_random import materialise, sd15_components  # noqa: E402

from webui.domain.controlnet_models import ControlNetKind  # noqa: E402
from webui.runtime.controlnet.apply import ControlPlan, ControlUnitInput  # noqa: E402
from webui.runtime.controlnet.models import LoadedControlNet  # noqa: E402

CONFIG = REPO / "webui" / "runtime" / "configs" / "controlnet" / "sd1" / "config.json"


def sd15_controlnet(seed: int) -> Any:
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    config = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    with init_empty_weights(include_buffers=True):
        model = ControlNetModel.from_config(config)
    return materialise(model, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = sd15_components()["unet"].to(device, dtype)
    controls = [  # Easel's own loaded-ControlNet record, so the hook sees what a real unit gives it
        LoadedControlNet(None, sd15_controlnet(seed).to(device, dtype), ControlNetKind.CONTROLNET, 768, "sd1",
                         downscale=8, dtype=dtype, device=device)
        for seed in (10, 11)
    ]  # fmt: skip
    image = Image.new("RGB", (args.size, args.size), (128, 128, 128))
    latent = args.size // 8
    sample = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
    context = torch.randn(2, 77, 768, device=device, dtype=dtype)
    timestep = torch.tensor(500, device=device)

    def step(units: int) -> float:
        plan = ControlPlan([ControlUnitInput(control=c, image=image) for c in controls[:units]])
        with plan.session(unet, batch=1, total_steps=20), torch.inference_mode():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            unet(sample, timestep, encoder_hidden_states=context)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    for units in (0, 1, 2):  # warm-up: kernels, allocator, the hint tensors
        step(units)
    times: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for _ in range(args.rounds):
        for units in (0, 1, 2):
            times[units].append(step(units))
    base = statistics.median(times[0])
    print(f"device {device} ({dtype}), {args.size}x{args.size}, CFG batch 2, {args.rounds} rounds")
    for units, values in times.items():
        median = statistics.median(values)
        print(f"  {units} unit(s): {median * 1000:8.1f} ms per step  ({median / base:.2f}x of no ControlNet)")


if __name__ == "__main__":
    main()
