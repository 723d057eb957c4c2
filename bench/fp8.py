"""fp8 weight storage (option ``fp8_storage``): weight memory and the per-step cost of the upcasts.

An SD1.5-shaped UNet (random weights, bundled configs) runs CFG steps (batch 2) at 256² (latent 32²) in
fp32, then the same UNet after ``webui.runtime.fp8.store_in_fp8``; the output difference of one step and
the median step times are printed, with the ratio fp8 / fp32 measured in this process. On a CUDA machine
(``--device cuda``) the compute dtype is float16, the baseline is the fp16 UNet.

    python bench/fp8.py [--steps 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.sd15_random import parameter_bytes, sd15_components  # noqa: E402


def _steps(unet: torch.nn.Module, inputs: tuple[torch.Tensor, ...], count: int, device: str) -> list[float]:
    times = []
    with torch.inference_mode():
        for _ in range(count):
            start = time.perf_counter()
            unet(*inputs, return_dict=False)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    from webui.runtime.fp8 import store_in_fp8

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    parts = sd15_components()
    unet, text_encoder = parts["unet"].to(args.device, dtype), parts["text_encoder"].to(args.device, dtype)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 32, 32, generator=generator).to(args.device, dtype)
    context = torch.randn(2, 77, 768, generator=generator).to(args.device, dtype)
    inputs = (sample, torch.tensor(500, device=args.device), context)

    baseline_bytes = parameter_bytes([unet, text_encoder])
    with torch.inference_mode():
        reference = unet(*inputs, return_dict=False)[0].float()
    _steps(unet, inputs, 1, args.device)  # warm-up
    baseline = _steps(unet, inputs, args.steps, args.device)

    model = SimpleNamespace(unet=unet, text_encoders=[text_encoder], fp8=False)
    store_in_fp8(model, dtype)  # type: ignore[arg-type]
    fp8_bytes = parameter_bytes([unet, text_encoder])
    with torch.inference_mode():
        output = unet(*inputs, return_dict=False)[0].float()
    _steps(unet, inputs, 1, args.device)
    stored = _steps(unet, inputs, args.steps, args.device)

    error = (output - reference).abs()
    scale = reference.abs().mean()
    print(f"device {args.device}, compute {str(dtype).removeprefix('torch.')}, CFG batch 2, latent 32x32")
    print(f"UNet + text encoder weights: {baseline_bytes / 2**30:.3f} GiB -> {fp8_bytes / 2**30:.3f} GiB "
          f"(ratio {fp8_bytes / baseline_bytes:.3f})")  # fmt: skip
    print(f"one step's output: mean |fp8 - full| = {error.mean():.4f} (mean |full| = {scale:.4f}, "
          f"relative {error.mean() / scale:.3f}), max {error.max():.3f}")  # fmt: skip
    base_s, fp8_s = statistics.median(baseline), statistics.median(stored)
    print(f"median step: full {base_s:.3f} s, fp8 {fp8_s:.3f} s, ratio {fp8_s / base_s:.3f}")


if __name__ == "__main__":
    main()
