"""Easel's txt2img (``generate_batch``) against a plain diffusers ``StableDiffusionPipeline`` (same parts).

Both sides share the very same unet / vae / text encoder / tokenizer objects, the same scheduler class and
config (built by Easel's sampler table), steps, size, CFG, seed and prompt. Easel runs its own path:
A1111 prompt encoding, seeded noise, a fresh scheduler and pipeline per call, ``output_type="latent"`` and
its own VAE decode. The plain pipeline gets the prompt text (its own encoding), a seeded generator and
``output_type="pil"``. The two are alternated in one process after a warm-up; the order flips every round
so slow drift (thermal, other processes) falls on both sides.

    python bench/txt2img_overhead.py --model tiny
    python bench/txt2img_overhead.py --model sd15
    python bench/txt2img_overhead.py --model sd15 --device cuda --size 512 --steps 20
    python bench/txt2img_overhead.py --model tiny --profile easel   # cProfile of one Easel call
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "bench"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from sd15_random import sd1_config, sd15_components  # noqa: E402

from webui.domain.models import CheckpointRecord, ModelFamily, ModelFormat  # noqa: E402
from webui.runtime.loader import LoadedModel  # noqa: E402

PROMPT = "a photo of a cat sitting on a wooden table, highly detailed"
SEED = 1234
CFG = 7.0

PRESETS = {
    "tiny": {"size": 64, "steps": 20},
    "sd15": {"size": 256, "steps": 8},
}


def build_model(kind: str, device: str = "cpu") -> LoadedModel:
    """A LoadedModel around in-memory components (the loader is not what is measured here); float16 on
    CUDA, float32 on the CPU."""
    if kind == "tiny":
        from tests.fixtures.tiny_models import tiny_sd15_components

        parts: dict[str, Any] = tiny_sd15_components()
    else:
        from webui.runtime.tokenizer import clip_tokenizer

        parts = sd15_components()
        parts["tokenizer"] = clip_tokenizer(Path("/tmp/easel-bench-tokenizer"))
    target = torch.device(device)
    dtype = torch.float16 if target.type == "cuda" else torch.float32
    for name in ("unet", "vae", "text_encoder"):
        parts[name].eval().requires_grad_(False).to(target, dtype)
    record = CheckpointRecord(
        name=f"bench-{kind}.safetensors",
        path=f"/nonexistent/bench-{kind}.safetensors",
        format=ModelFormat.SAFETENSORS,
        size=0,
        mtime=0.0,
        family=ModelFamily.SD1,
    )
    return LoadedModel(
        record=record,
        family=ModelFamily.SD1,
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        text_encoder_2=None,
        tokenizer=parts["tokenizer"],
        tokenizer_2=None,
        scheduler_config=sd1_config("scheduler"),
        dtype=dtype,
        device=target,
    )


class Runner:
    def __init__(self, model: LoadedModel, sampler_name: str, size: int, steps: int) -> None:
        from diffusers import StableDiffusionPipeline

        from webui.domain.samplers import resolve_sampler
        from webui.runtime.generate import DiffusionJob
        from webui.runtime.samplers import scheduler_class, scheduler_kwargs

        self.model = model
        self.sampler, self.schedule = resolve_sampler(sampler_name)
        self.job = DiffusionJob(
            prompt=PROMPT,
            negative_prompt="",
            steps=steps,
            cfg_scale=CFG,
            width=size,
            height=size,
            seeds=[SEED],
            subseeds=[SEED],
            subseed_strength=0.0,
            sampler=self.sampler,
            schedule=self.schedule,
        )
        # The plain side gets the identical scheduler: same class, same constructor arguments.
        self.scheduler_cls = scheduler_class(self.sampler)
        self.scheduler_kwargs = scheduler_kwargs(self.sampler, self.schedule, dict(model.scheduler_config))
        self.plain = StableDiffusionPipeline(
            vae=model.vae,
            text_encoder=model.text_encoder,
            tokenizer=model.tokenizer,
            unet=model.unet,
            scheduler=self.scheduler_cls(**self.scheduler_kwargs),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        self.plain.set_progress_bar_config(disable=True)
        self.size, self.steps = size, steps

    def easel(self) -> Any:
        from webui.runtime.generate import generate_batch

        self.model.encodings.clear()  # like for like: plain diffusers encodes the prompt on every call
        images, _stopped = generate_batch(self.model, self.job)
        return images[0]

    def plain_run(self) -> Any:
        self.plain.scheduler = self.scheduler_cls(**self.scheduler_kwargs)
        out = self.plain(
            prompt=PROMPT,
            negative_prompt="",
            num_inference_steps=self.steps,
            guidance_scale=CFG,
            height=self.size,
            width=self.size,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="pil",
        )
        return out.images[0]


def timed(fn: Any) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result). CPU time is less disturbed by other busy processes."""
    started, cpu_started = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - started, time.process_time() - cpu_started, result


def profile(runner: Runner, which: str, top: int) -> None:
    fn = runner.easel if which == "easel" else runner.plain_run
    fn()  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).sort_stats("cumulative")
    stats.print_stats(top)
    print(stream.getvalue())
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    print(stream.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each side before the rounds")
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--profile", choices=["easel", "plain"], default=None)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (float16)")
    args = parser.parse_args()

    preset = PRESETS[args.model]
    size = args.size or preset["size"]
    steps = args.steps or preset["steps"]
    t0 = time.perf_counter()
    model = build_model(args.model, args.device)
    runner = Runner(model, args.sampler, size, steps)
    print(
        f"model={args.model} device={args.device} size={size}x{size} steps={steps} sampler={args.sampler} "
        f"cfg={CFG} seed={SEED} torch threads={torch.get_num_threads()} "
        f"(built in {time.perf_counter() - t0:.1f}s)"
    )
    if args.profile:
        profile(runner, args.profile, args.top)
        return

    # Warm-up: one call of each (allocator, oneDNN kernels, lazy imports).
    warm_easel = timed(runner.easel)
    warm_plain = timed(runner.plain_run)
    for _ in range(args.warmup - 1):
        runner.easel()
        runner.plain_run()
    print(f"warm-up: easel {warm_easel[0]:.3f}s  plain {warm_plain[0]:.3f}s", flush=True)
    diff = np.abs(np.asarray(warm_easel[2], dtype=np.int16) - np.asarray(warm_plain[2], dtype=np.int16)).max()
    print(f"same image check: max |easel - plain| pixel difference = {int(diff)} (of 255)")

    wall: dict[str, list[float]] = {"easel": [], "plain": []}
    cpu: dict[str, list[float]] = {"easel": [], "plain": []}
    loads: list[float] = []
    for round_index in range(args.rounds):
        order = ("easel", "plain") if round_index % 2 == 0 else ("plain", "easel")
        for which in order:
            seconds, cpu_seconds, _ = timed(runner.easel if which == "easel" else runner.plain_run)
            wall[which].append(seconds)
            cpu[which].append(cpu_seconds)
            print(f"round {round_index + 1} {which}: {seconds:.3f}s wall, {cpu_seconds:.3f}s CPU", flush=True)
        loads.append(os.getloadavg()[0])

    print()
    print(f"| side  | median wall s | min s  | max s  | median CPU s | wall runs ({args.rounds} rounds)")
    print("|-------|---------------|--------|--------|--------------|------")
    for label in ("easel", "plain"):
        times = wall[label]
        runs = " ".join(f"{t:.3f}" for t in times)
        print(
            f"| {label} | {statistics.median(times):13.3f} | {min(times):6.3f} | {max(times):6.3f} "
            f"| {statistics.median(cpu[label]):12.3f} | {runs}"
        )
    print()
    ratio = statistics.median(wall["easel"]) / statistics.median(wall["plain"])
    print(
        f"ratio easel/plain: median wall {ratio:.3f}, "
        f"min wall {min(wall['easel']) / min(wall['plain']):.3f}, "
        f"median CPU {statistics.median(cpu['easel']) / statistics.median(cpu['plain']):.3f} "
        f"(target <= 1.03: {'met' if ratio <= 1.03 else 'NOT met'})"
    )
    print("1-min load average after each round: " + " ".join(f"{x:.2f}" for x in loads))


if __name__ == "__main__":
    main()
