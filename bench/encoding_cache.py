"""The text encoders' output cache (an unchanged prompt is not encoded again): what it saves per job.

Builds the tiny SD 1.5 or an SD1.5-shaped model with random weights (``bench/txt2img_overhead.py``'s
models), then, in alternating rounds in one process:

* the prompt's encoding alone (``encode_schedule`` of prompt and negative), cache emptied vs. filled;
* a whole txt2img job (Easel's ``generate_batch``), cache emptied before it vs. kept from the last job.

    python bench/encoding_cache.py [--model tiny|sd15] [--rounds 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from txt2img_overhead import PRESETS, Runner, build_model  # noqa: E402

from webui.runtime.conditioning import model_prompt_encoder  # noqa: E402

NEGATIVE = "blurry, low quality, watermark, text, deformed hands, extra fingers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    preset = PRESETS[args.model]
    model = build_model(args.model, args.device)
    runner = Runner(model, "Euler", preset["size"], preset["steps"])
    runner.job.negative_prompt = NEGATIVE
    cache = model.encodings

    def encode() -> None:
        encoder = model_prompt_encoder(model, None)
        encoder.encode_schedule(runner.job.prompt, NEGATIVE, runner.job.steps, 1)

    def job() -> None:
        from webui.runtime.generate import generate_batch

        generate_batch(model, runner.job)

    def timed(fn: object, cold: bool) -> float:
        if cold:
            cache.clear()
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        return time.perf_counter() - start

    job()  # warm-up: kernels, allocator
    rows = []
    for name, fn, repeat in (("encoding (prompt + negative)", encode, 20), ("whole job", job, 1)):
        cold: list[float] = []
        warm: list[float] = []
        for round_index in range(args.rounds):
            for _ in range(repeat):
                order = (True, False) if round_index % 2 == 0 else (False, True)
                for is_cold in order:
                    if not is_cold:
                        fn()  # the cache holds this prompt
                    (cold if is_cold else warm).append(timed(fn, is_cold))
        c, w = statistics.median(cold), statistics.median(warm)
        rows.append((name, c, w))
    size, steps = preset["size"], preset["steps"]
    print(f"model={args.model} device={args.device} {size}x{size} {steps} steps Euler, {args.rounds} rounds")
    print("| measure | cache empty (median) | cache filled (median) | saved |\n|---|---|---|---|")
    for name, c, w in rows:
        saved = f"{1000 * (c - w):.1f} ms ({100 * (c - w) / c:.1f} %)"
        print(f"| {name} | {1000 * c:.1f} ms | {1000 * w:.1f} ms | {saved} |")


if __name__ == "__main__":
    main()
