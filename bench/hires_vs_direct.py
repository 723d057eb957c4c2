"""Hires fix (2x) vs generating directly at the large size, and tiled upscaling of a 2048² image.

Same process, CPU, the tiny SD 1.5 of the tests (real architecture, random weights) and a tiny ESRGAN 2x:
the numbers compare code paths (time, peak resident memory), not image quality.

    .venv/bin/python bench/hires_vs_direct.py [--size 256] [--upscale-size 2048]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(func: Callable[[], Any]) -> tuple[float, float, float]:
    """(seconds, RSS before MB, peak RSS during MB), RSS sampled every 5 ms."""
    before = rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    func()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return seconds, before, max(peak[0], rss_mb())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256, help="large size; hires starts at half of it")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--upscale-size", type=int, default=2048)
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from tests.fixtures.tiny_models import tiny_sd15_components
    from tests.fixtures.upscaler_models import write_esrgan
    from webui.container import build_services
    from webui.domain.generation import Txt2ImgRequest
    from webui.runtime.upscalers import UpscalerRunner, run_model
    from webui.settings import Settings

    data = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    StableDiffusionPipeline(
        **tiny_sd15_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(data / "models" / "Stable-diffusion" / "tiny")
    services = build_services(Settings(data_dir=data, preload_model=False))
    common = {
        "prompt": "a red circle",
        "seed": 1,
        "steps": args.steps,
        "sampler_name": "Euler",
        "save_images": False,
    }
    half = args.size // 2
    direct = Txt2ImgRequest(**common, width=args.size, height=args.size)
    hires = Txt2ImgRequest(
        **common, width=half, height=half, enable_hr=True, hr_scale=2.0, denoising_strength=0.5
    )
    services.generation.txt2img(Txt2ImgRequest(**common, width=64, height=64))  # load + warm up
    print(f"torch threads: {torch.get_num_threads()}, steps {args.steps}, hires denoise 0.5 (5 hires steps)")
    rows = []
    for name, request in (("direct", direct), ("hires 2x", hires), ("direct", direct), ("hires 2x", hires)):
        seconds, before, peak = measure(lambda r=request: services.generation.txt2img(r))
        rows.append((name, seconds, peak - before))
        print(f"{name:9s} {args.size}²: {seconds:6.2f} s, peak RSS +{peak - before:7.1f} MB")
    direct_s = min(s for n, s, _ in rows if n == "direct")
    hires_s = min(s for n, s, _ in rows if n != "direct")
    print(f"hires / direct time ratio: {hires_s / direct_s:.2f}")
    services.generation.shutdown()

    path = write_esrgan(data / "models" / "ESRGAN", "2x-tiny.safetensors", scale=2)
    runner = UpscalerRunner()
    model = runner.model(path)
    image = Image.effect_noise((args.upscale_size, args.upscale_size), 64).convert("RGB")
    seconds, before, peak = measure(lambda: run_model(model, image))
    output_mb = (args.upscale_size * 2) ** 2 * 3 / 2**20
    print(
        f"tiled 2x ESRGAN of {args.upscale_size}²: {seconds:.1f} s, peak RSS +{peak - before:.0f} MB "
        f"(output array alone {output_mb:.0f} MB)"
    )


if __name__ == "__main__":
    main()
