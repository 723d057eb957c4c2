"""The GPU speed and memory script: every row of the GPU issue that Easel can measure today, in one run.

Random weights from Easel's bundled configs (SD 1.5 and SDXL shapes, no download), fp16 on CUDA:

* txt2img, 20 steps, DPM++ 2M Karras, CFG 7: SD1.5 512² and SDXL 1024² at batch 1 and 4 — the denoising
  loop's it/s (CUDA events recorded at the step callbacks: no step waits for the card) and the image's
  end-to-end time, Easel's ``generate_batch`` (its default weight layout: channels-last on CUDA) against a
  plain diffusers pipeline over the same modules (NCHW, diffusers' default) and scheduler, in the same
  process; peak VRAM of each; Easel with the other layout;
* eager against compiled + CUDA graphs (and, for SD1.5, compiled without graphs); first image with compile;
* for each of the issue's it/s targets a row misses, a profile of a 5-step job: the card's busy share of
  the wall time (kernel-bound or launch-bound) and the ops that took the most;
* host-device synchronisations (torch's sync debug mode): per step of the loop, and where they come from;
* VAE decode ms (one image); LoRA switch ms (SD1.5, two rank-16 LoRAs on every attention projection);
  RAM→VRAM switch of a whole SDXL checkpoint (page-locked as Easel keeps it, and pageable); the refiner's
  cost (SDXL base + SDXL refiner at 0.8 against the base alone); fp8 weight storage (SDXL 1024²: it/s and
  peak VRAM against fp16); 1 and 2 ControlNet units (SD1.5 512², SDXL 1024², against diffusers' ControlNet
  pipeline); an IP-Adapter unit;
  SDXL 1024² with the process capped at 8 GiB (``set_per_process_memory_fraction``), fp8 + medvram.

Each row runs on its own: one that fails (an out-of-memory, a missing kernel) prints its error and the
script goes on. The compiled rows run Easel's ``easel_compile_unet`` path (``webui.runtime.compile``).
The table is printed and appended to ``bench/RESULTS.md`` with the card, driver and versions.

    python bench/gpu.py                  # on a CUDA machine, about 5–8 minutes on an H100/H200
    python bench/gpu.py --smoke          # tiny models on the CPU: checks the script itself in a minute
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.sd15_random import materialise  # noqa: E402
from webui.domain.models import CheckpointRecord, ModelFamily, ModelFormat  # noqa: E402
from webui.domain.samplers import resolve_sampler  # noqa: E402
from webui.runtime.generate import DiffusionJob, decode_latents, generate_batch  # noqa: E402
from webui.runtime.loader import LoadedModel  # noqa: E402

CONFIGS = REPO / "webui" / "runtime" / "configs"
PROMPT = "a photo of a cat sitting on a wooden table, highly detailed"
CFG = 7.0
ROWS: list[tuple[str, str]] = []  # (row, result)
ONLY: list[str] = []  # --only: run just the rows whose name contains one of these
DEADLINE = [float("inf")]  # --budget: perf_counter() after which no row starts
CUDA = False  # set by main: the run is on a CUDA card (not --smoke)
# The targets at batch 1, fp16, on an H100/H200 (it/s of the denoising loop); a row that misses one
# is followed by a profile of where its time goes.
TARGETS = {"sd1": {"eager": 60.0, "compiled": 120.0}, "sdxl": {"eager": 16.0, "compiled": 25.0}}
RATES: dict[tuple[str, str], float] = {}  # (family, "eager" | "compiled") → it/s measured at batch 1


# ------------------------------------------------------------------------------------------------ models


def _config(family: str, component: str) -> dict[str, Any]:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    data: dict[str, Any] = json.loads((CONFIGS / family / component / name).read_text())
    return data


def _text_encoder(config: dict[str, Any]) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    options = {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}
    projected = (config.get("architectures") or [""])[0].endswith("WithProjection")
    return (CLIPTextModelWithProjection if projected else CLIPTextModel)(CLIPTextConfig(**options))


def build_model(family: str, device: str, dtype: torch.dtype, smoke: bool, seed: int = 0) -> LoadedModel:
    """A LoadedModel of ``family`` (``sd1``, ``sdxl``, ``sdxl-refiner``) with random weights."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from webui.runtime.loader import tokenizers_for

    kind = ModelFamily(family)
    if smoke:
        from tests.fixtures import tiny_models

        builder = {
            "sd1": tiny_models.tiny_sd15_components,
            "sdxl": tiny_models.tiny_sdxl_components,
            "sdxl-refiner": tiny_models.tiny_sdxl_refiner_components,
        }[family]
        parts: dict[str, Any] = {
            k: v.to(device, dtype) for k, v in builder().items() if isinstance(v, torch.nn.Module)
        }
        scheduler = _config("sdxl" if kind.is_sdxl else "sd1", "scheduler")
    else:
        with init_empty_weights(include_buffers=True):
            parts = {"unet": UNet2DConditionModel.from_config(_config(family, "unet")),
                     "vae": AutoencoderKL.from_config(_config(family, "vae"))}  # fmt: skip
            for name in ("text_encoder", "text_encoder_2"):
                if (CONFIGS / family / name).is_dir():
                    parts[name] = _text_encoder(_config(family, name))
        parts = {k: materialise(v, seed + i).to(device, dtype) for i, (k, v) in enumerate(parts.items())}
        scheduler = _config(family, "scheduler")
    tokenizer, tokenizer_2 = tokenizers_for(kind, Path("/tmp/easel-bench-tokenizer"))
    record = CheckpointRecord(name=f"bench-{family}.safetensors", path=f"/nonexistent/bench-{family}-{seed}",
                              format=ModelFormat.SAFETENSORS, size=0, mtime=0.0, family=kind)  # fmt: skip
    return LoadedModel(
        record=record, family=kind, unet=parts["unet"], vae=parts["vae"],
        text_encoder=parts.get("text_encoder"), text_encoder_2=parts.get("text_encoder_2"),
        tokenizer=tokenizer if "text_encoder" in parts else None, tokenizer_2=tokenizer_2,
        scheduler_config=scheduler, dtype=dtype, device=torch.device(device),
    )  # fmt: skip


def job(
    size: int, batch: int, steps: int, extra: dict[str, Any] | None = None, sampler: str = "DPM++ 2M Karras"
) -> DiffusionJob:
    spec, schedule = resolve_sampler(sampler)  # A1111's combined names carry their schedule
    seeds = list(range(1234, 1234 + batch))
    return DiffusionJob(
        prompt=PROMPT, negative_prompt="", steps=steps, cfg_scale=CFG, width=size, height=size, seeds=seeds,
        subseeds=seeds, subseed_strength=0.0, sampler=spec, schedule=schedule, extra=dict(extra or {}),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ timing


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def peak() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    yield out
    out["gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


class StepClock:
    """Marks at the step callbacks: CUDA events on a card (recorded in the stream, so no step waits for the
    card and the CPU may run ahead as it does in a real job), wall time on the CPU."""

    def __init__(self) -> None:
        self.marks: list[Any] = []

    def mark(self) -> None:
        if CUDA:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def rate(self) -> float:
        """Steps per second from the first mark to the last (call after the run has synchronised)."""
        if len(self.marks) < 2:
            return float("nan")
        first, last = self.marks[0], self.marks[-1]
        seconds = first.elapsed_time(last) / 1000 if CUDA else last - first
        return (len(self.marks) - 1) / seconds


def easel_run(model: LoadedModel, work: DiffusionJob) -> tuple[float, float]:
    """(end-to-end seconds, denoising it/s from the first to the last step callback)."""
    clock = StepClock()

    def on_step(step: int, total: int, latents: Any) -> bool:
        clock.mark()
        return True

    sync()
    start = time.perf_counter()
    generate_batch(model, job(work.width, len(work.seeds), work.steps, work.extra), on_step=on_step)
    sync()
    return time.perf_counter() - start, clock.rate()


def plain_run(
    model: LoadedModel, work: DiffusionJob, controlnets: list[Any] | None = None, hint: Any = None
) -> tuple[float, float]:
    """As ``easel_run``, with diffusers' own pipeline (its ControlNet pipeline for ``controlnets``, each
    given ``hint``)."""
    import diffusers

    from webui.runtime.generate import assemble_pipeline
    from webui.runtime.samplers import build_scheduler

    scheduler = build_scheduler(work.sampler, work.schedule, dict(model.scheduler_config), eta=None,
                                noise_seeds=work.seeds)  # fmt: skip
    name = "StableDiffusionXL" if model.family.is_sdxl else "StableDiffusion"
    control: dict[str, Any] = {}
    if controlnets:
        single = len(controlnets) == 1
        net = controlnets[0] if single else diffusers.MultiControlNetModel(controlnets)
        pipe = assemble_pipeline(
            model, scheduler, getattr(diffusers, f"{name}ControlNetPipeline"), controlnet=net
        )
        control = {"image": hint if single else [hint] * len(controlnets)}
    else:
        pipe = assemble_pipeline(model, scheduler, getattr(diffusers, f"{name}Pipeline"))
    clock = StepClock()

    def callback(_pipe: Any, _step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        clock.mark()
        return kwargs

    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        pipe(prompt=[PROMPT] * len(work.seeds), num_inference_steps=work.steps, guidance_scale=CFG,
             height=work.height, width=work.width, output_type="pil", callback_on_step_end=callback,
             generator=[torch.Generator("cpu").manual_seed(s) for s in work.seeds], **control)  # fmt: skip
    sync()
    return time.perf_counter() - start, clock.rate()


def where_time_goes(model: LoadedModel, size: int, compiled: bool) -> str:
    """A 5-step job under the profiler: how much of the wall time the card (the CPU in --smoke) was busy,
    which says launch/Python-bound or kernel-bound, and the ops that took the most of it."""
    from torch.profiler import ProfilerActivity, profile

    from webui.runtime.compile import compiled_unet

    work = job(size, 1, 5)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if CUDA else [])]

    def own(event: Any) -> float:  # µs of the op itself, on the card (the CPU in --smoke)
        return float(getattr(event, "self_device_time_total", 0.0) if CUDA else event.self_cpu_time_total)

    with compiled_unet(model, compiled, (size, 1)):
        easel_run(model, work)
        sync()
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            easel_run(model, work)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    busy = sum(own(event) for event in events) / 1e6
    top = sorted(events, key=own, reverse=True)[:6]
    names = "; ".join(f"{event.key[:48]} {own(event) / 1000:.1f} ms ×{event.count}" for event in top)
    share = busy / wall
    waiting = "launch / Python-bound: the card waits for the CPU" if CUDA else "time outside ops (Python)"
    bound = "kernel-bound" if share >= 0.8 else waiting
    where = "card" if CUDA else "CPU"
    return f"{where} busy {1000 * busy:.0f} ms of {1000 * wall:.0f} ms ({share:.0%}, {bound}) | top: {names}"


def syncs_per_step(model: LoadedModel, size: int, steps: int, sampler: str) -> str:
    """How often a job makes the CPU wait for the card (torch's sync debug mode): up to the end of the
    first step (prompt, latents, the scheduler's first look-ups), in each later step, and in the decode."""
    from collections import Counter

    from webui.runtime.devices import host_syncs

    work = job(size, 1, steps, sampler=sampler)
    generate_batch(model, work)  # first calls (autotuning, caches) are not what a step costs
    marks: list[int] = []
    with host_syncs() as syncs:
        generate_batch(model, work, on_step=lambda *_: marks.append(len(syncs)) or True)
        total, places = len(syncs), syncs.places()
    in_loop = marks[-1] - marks[0]
    where = Counter("/".join(Path(place).parts[-2:]) for place in places[marks[0] : marks[-1]])
    named = "; ".join(f"{place} ×{count}" for place, count in where.most_common(4)) or "none"
    return ("" if CUDA else "no card, nothing to count: ") + (
        f"{in_loop / (len(marks) - 1):.2f} per step in steps 2–{len(marks)} | {marks[0]} up to the end of "
        f"step 1 | {total - marks[-1]} after the last step | in the loop: {named}"
    )


def best_of(runs: int, fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    results = [fn() for _ in range(runs)]
    return min(r[0] for r in results), max(r[1] for r in results)


def row(name: str) -> Callable[[Callable[[], str]], None]:
    """Run one row now; its error (out of memory included) becomes the row's result."""

    def run(fn: Callable[[], str]) -> None:
        if ONLY and not any(part in name for part in ONLY):
            return
        if time.perf_counter() > DEADLINE[0]:
            ROWS.append((name, "not run: the --budget was spent (run it with --only)"))
            return
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            result = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            traceback.print_exc()
        ROWS.append((name, result))
        print(f"{name}: {result}  ({time.perf_counter() - started:.1f} s)", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    return run


# ------------------------------------------------------------------------------------------------ rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (checks the script)")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per row after a warm-up (best kept)")
    parser.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument(
        "--only", action="append", default=[], metavar="TEXT",
        help="run only the rows whose name contains TEXT (repeatable): to finish a run that was cut short",
    )  # fmt: skip
    parser.add_argument(
        "--budget", type=float, default=0, metavar="SECONDS",
        help="start no row after this many seconds, so the table is written before a time limit (0: none)",
    )  # fmt: skip
    args = parser.parse_args()
    global CUDA
    ONLY.extend(args.only)
    cuda = CUDA = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        sys.exit("no CUDA device: run on a GPU machine, or use --smoke to check the script on the CPU")
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    steps = 20 if cuda else 3
    sizes = {"sd1": 512, "sdxl": 1024} if cuda else {"sd1": 64, "sdxl": 64}
    started = time.perf_counter()
    if args.budget > 0:
        DEADLINE[0] = started + args.budget

    from webui.runtime.channels_last import use_channels_last, wanted

    layout = wanted("Automatic", torch.device(device))  # Easel's default weight layout on this device
    models: dict[str, LoadedModel] = {}
    for family in ("sd1", "sdxl"):
        models[family] = build_model(family, device, dtype, args.smoke)
        for batch in (1, 4):
            work = job(sizes[family], batch, steps)

            def compare(
                model: LoadedModel = models[family], work: DiffusionJob = work, family: str = family
            ) -> str:
                try:
                    use_channels_last(model, layout)  # Easel's default on this device
                    easel_run(model, work)  # warm-up (kernels, allocator)
                    with peak() as easel_peak:
                        easel_s, easel_rate = best_of(args.runs, lambda: easel_run(model, work))
                    use_channels_last(model, not layout)
                    easel_run(model, work)
                    other_s, other_rate = best_of(args.runs, lambda: easel_run(model, work))
                    use_channels_last(model, False)  # diffusers' default
                    plain_run(model, work)
                    with peak() as plain_peak:
                        plain_s, plain_rate = best_of(args.runs, lambda: plain_run(model, work))
                finally:
                    use_channels_last(model, layout)  # the rows after this one run Easel's default
                easel = f"Easel {easel_rate:.1f} it/s, {easel_s:.3f} s, {easel_peak['gib']:.2f} GiB"
                plain = f"diffusers {plain_rate:.1f} it/s, {plain_s:.3f} s, {plain_peak['gib']:.2f} GiB"
                if len(work.seeds) == 1:
                    RATES[(family, "eager")] = easel_rate
                name = "NCHW" if layout else "channels-last"
                other = f"Easel with {name} weights {other_rate:.1f} it/s, {other_s:.3f} s"
                return f"{easel} | {plain} | time ratio {easel_s / plain_s:.3f} | {other}"

            row(f"{family} {sizes[family]}² batch {batch}, {steps} steps, eager")(compare)

        def compiled(
            model: LoadedModel = models[family],
            size: int = sizes[family],
            graphs: bool = True,
            family: str = family,
        ) -> str:
            from torch._dynamo.utils import counters

            from webui.runtime.compile import compiled_unet

            work = job(size, 1, steps)
            eager_s, eager_rate = best_of(args.runs, lambda: easel_run(model, work))
            skips = counters["inductor"]["cudagraph_skips"]
            with compiled_unet(model, True, (size, 1), cuda_graphs=graphs):
                start = time.perf_counter()
                easel_run(model, work)  # compiles
                first = time.perf_counter() - start
                compiled_before = counters["stats"]["unique_graphs"]
                compiled_s, compiled_rate = best_of(args.runs, lambda: easel_run(model, work))
                again = counters["stats"]["unique_graphs"] - compiled_before
            skipped = counters["inductor"]["cudagraph_skips"] - skips  # graphs inductor could not capture
            if graphs:
                RATES[(family, "compiled")] = compiled_rate
            return (
                f"compiled {compiled_rate:.1f} it/s, {compiled_s:.3f} s | eager {eager_rate:.1f} it/s, "
                f"{eager_s:.3f} s | time ratio {compiled_s / eager_s:.3f} | first image with the compile "
                f"{first:.1f} s | graphs compiled after the first: {again} | CUDA graph skips: {skipped}"
            )

        row(f"{family} {sizes[family]}² batch 1, {steps} steps, compiled UNet + CUDA graphs")(compiled)
        if family == "sd1":  # what the graphs add (the compile itself comes from inductor's cache)
            row(f"sd1 {sizes[family]}² batch 1, {steps} steps, compiled UNet, no CUDA graphs")(
                lambda: compiled(graphs=False)
            )

        def vae(model: LoadedModel = models[family], size: int = sizes[family]) -> str:
            latents = torch.randn(1, 4, size // 8, size // 8, device=device, dtype=dtype)
            decode_latents(model, latents)
            times = []
            for _ in range(3):
                sync()
                start = time.perf_counter()
                decode_latents(model, latents)
                sync()
                times.append(time.perf_counter() - start)
            return f"{1000 * statistics.median(times):.1f} ms"

        row(f"{family} VAE decode {sizes[family]}²")(vae)

        for sampler in ("DPM++ 2M Karras", "Euler a") if family == "sd1" else ("DPM++ 2M Karras",):
            row(f"{family} host-device syncs, {sampler}")(
                lambda model=models[family], size=sizes[family], sampler=sampler: syncs_per_step(
                    model, size, steps, sampler
                )
            )

        for mode, target in TARGETS[family].items():
            rate = RATES.get((family, mode), float("nan"))
            if args.smoke or rate < target:  # the smoke run profiles to check this code
                row(
                    f"profile: {family} {sizes[family]}² batch 1 {mode}, {rate:.1f} it/s, target {target:.0f}"
                )(
                    lambda model=models[family], size=sizes[family], mode=mode: where_time_goes(
                        model, size, mode == "compiled"
                    )
                )

    def lora_switch() -> str:
        from tests.fixtures.lora_files import kohya_lora
        from webui.runtime.lora import LoraPatcher, parse_lora_state

        model = models["sd1"]
        unet, te = model.unet.float().cpu(), model.text_encoder.float().cpu()
        states = [kohya_lora(unet, [te], rank=16, seed=s) for s in (1, 2)]
        model.unet.to(device, dtype), model.text_encoder.to(device, dtype)
        patcher = LoraPatcher(model)
        sets = [
            [
                (
                    _active(f"bench-{i}"),
                    parse_lora_state(state, name=f"bench-{i}", key=f"bench-{i}", file="bench"),
                )
            ]
            for i, state in enumerate(states)
        ]
        patcher.apply(sets[0])
        times = []
        for i in range(6):
            sync()
            start = time.perf_counter()
            patcher.apply(sets[(i + 1) % 2])
            sync()
            times.append(time.perf_counter() - start)
        patcher.restore()
        return f"{1000 * statistics.median(times):.1f} ms (median of 6 switches, 2 rank-16 LoRAs)"

    row("LoRA switch sd1 (merge in place)")(lora_switch)

    def model_switch() -> str:
        from webui.runtime.pinned import to_pinned_ram

        model = models["sdxl"]
        pageable, pinned, out = [], [], []
        for _ in range(2):
            model.to(torch.device("cpu"))
            sync()
            start = time.perf_counter()
            model.to(torch.device(device))
            sync()
            pageable.append(time.perf_counter() - start)
        held = None
        for _ in range(3):  # the first pins (allocates); later ones reuse the chunks, as the model cache does
            start = time.perf_counter()
            held = to_pinned_ram(model.modules(), held, pin=cuda)
            out.append(time.perf_counter() - start)
            start = time.perf_counter()
            model.to(torch.device(device), non_blocking=True)
            sync()
            pinned.append(time.perf_counter() - start)
        size = model.size_bytes() / 2**30
        return (
            f"pinned RAM→VRAM {min(pinned):.3f} s | pageable {min(pageable):.3f} s | VRAM→pinned RAM "
            f"{min(out[1:]):.3f} s (first, allocating: {out[0]:.3f} s) | {size:.2f} GiB"
        )

    row("RAM→VRAM switch sdxl")(model_switch)

    def refiner() -> str:
        from webui.runtime.refiner import RefinerPlan

        refiner_model = build_model("sdxl-refiner", device, dtype, args.smoke, seed=10)
        base_job = job(sizes["sdxl"], 1, steps)
        plan = RefinerPlan(model=refiner_model, switch_at=0.8)
        refined_job = job(sizes["sdxl"], 1, steps, {"refiner": plan})
        easel_run(models["sdxl"], refined_job)
        base_s, _ = best_of(args.runs, lambda: easel_run(models["sdxl"], base_job))
        refined_s, _ = best_of(args.runs, lambda: easel_run(models["sdxl"], refined_job))
        del refiner_model
        return (
            f"base {base_s:.3f} s, base + refiner at 0.8 {refined_s:.3f} s (ratio {refined_s / base_s:.3f})"
        )

    row(f"refiner sdxl {sizes['sdxl']}² batch 1")(refiner)

    def fp8() -> str:
        from webui.runtime.fp8 import store_in_fp8

        model = build_model("sdxl", device, dtype, args.smoke, seed=20)
        work = job(sizes["sdxl"], 1, steps)
        easel_run(model, work)
        with peak() as full_peak:
            full_s, full_rate = best_of(args.runs, lambda: easel_run(model, work))
        store_in_fp8(model, dtype)
        easel_run(model, work)
        with peak() as fp8_peak:
            fp8_s, fp8_rate = best_of(args.runs, lambda: easel_run(model, work))
        return (f"fp16 {full_rate:.1f} it/s {full_peak['gib']:.2f} GiB | fp8 {fp8_rate:.1f} it/s "
                f"{fp8_peak['gib']:.2f} GiB | time ratio {fp8_s / full_s:.3f}")  # fmt: skip

    row(f"fp8 storage sdxl {sizes['sdxl']}² batch 1")(fp8)

    def ip_adapter() -> str:
        from PIL import Image

        from tests.fixtures.ip_adapter_files import ip_adapter_state
        from webui.domain.controlnet_models import ControlNetKind
        from webui.runtime.controlnet.apply import ControlPlan, ControlUnitInput
        from webui.runtime.controlnet.ip_adapter import IPAdapterTokens, build_ip_adapter, split_state
        from webui.runtime.controlnet.models import LoadedControlNet

        model = models["sd1"]
        model.to(torch.device(device))
        state = ip_adapter_state(model.unet, embed_dim=1024)
        adapter = build_ip_adapter(split_state(state), "ip-adapter_sd15").to(device, dtype)
        embeds = torch.randn(1, 1024)
        kind, where = ControlNetKind.IP_ADAPTER, torch.device(device)
        loaded = LoadedControlNet(None, adapter, kind, 768, "sd1", downscale=8, dtype=dtype, device=where)
        unit = ControlUnitInput(
            control=loaded,
            image=Image.new("RGB", (8, 8)),
            ip_tokens=IPAdapterTokens(adapter, embeds, torch.zeros_like(embeds)),
        )
        plain_job = job(sizes["sd1"], 1, steps)
        unit_job = job(sizes["sd1"], 1, steps, {"control": ControlPlan([unit])})
        easel_run(model, unit_job)
        plain_s, plain_rate = best_of(args.runs, lambda: easel_run(model, plain_job))
        unit_s, unit_rate = best_of(args.runs, lambda: easel_run(model, unit_job))
        return (f"no unit {plain_rate:.1f} it/s | one IP-Adapter unit {unit_rate:.1f} it/s | time ratio "
                f"{unit_s / plain_s:.3f}")  # fmt: skip

    row(f"IP-Adapter unit sd1 {sizes['sd1']}² batch 1")(ip_adapter)

    def controlnets(family: str) -> str:
        """1 and 2 ControlNet units (the family's published ControlNet shape: a copy of the UNet's encoder),
        Easel against diffusers' ControlNet pipeline, with the time of no unit as the base."""
        from diffusers import ControlNetModel
        from PIL import Image

        from webui.domain.controlnet_models import ControlNetKind
        from webui.runtime.controlnet.apply import ControlPlan, ControlUnitInput
        from webui.runtime.controlnet.models import LoadedControlNet
        from webui.runtime.generate import vae_scale_factor

        model, size, where = models[family], sizes[family], torch.device(device)
        model.to(where)
        scale = vae_scale_factor(model)  # 8, as the published ControlNets' hint encoder (tiny models: less)
        levels = (16, 32, 96, 256)[: scale.bit_length()]
        # built where they run: SDXL's 1.25 B parameters are initialised on the card, not the CPU
        with where:
            nets = [
                ControlNetModel.from_unet(model.unet, conditioning_embedding_out_channels=levels)
                for _ in "ab"
            ]
        nets = [net.to(dtype) for net in nets]
        hint = Image.new("RGB", (size, size), (128, 128, 128))
        kind = ControlNetKind.CONTROLNET
        loaded = [
            LoadedControlNet(None, net.eval(), kind, None, family, downscale=scale, dtype=dtype, device=where)
            for net in nets
        ]

        def easel(units: int) -> tuple[float, float]:  # a new plan per job, as a request makes one
            plan = ControlPlan([ControlUnitInput(control=c, image=hint) for c in loaded[:units]])
            return easel_run(model, job(size, 1, steps, {"control": plan} if units else None))

        plain_work = job(size, 1, steps)
        base_s, base_rate = best_of(args.runs, lambda: easel(0))
        parts = [f"no unit {base_rate:.1f} it/s, {base_s:.3f} s"]
        for units in (1, 2):
            easel(units)
            with peak() as easel_peak:
                easel_s, easel_rate = best_of(args.runs, lambda units=units: easel(units))
            plain_run(model, plain_work, nets[:units], hint)
            with peak() as plain_peak:
                plain_s, plain_rate = best_of(
                    args.runs, lambda units=units: plain_run(model, plain_work, nets[:units], hint)
                )
            parts.append(
                f"{units} unit(s): Easel {easel_rate:.1f} it/s, {easel_s:.3f} s ({easel_s / base_s:.2f}× no "
                f"unit), {easel_peak['gib']:.2f} GiB; diffusers {plain_rate:.1f} it/s, {plain_s:.3f} s, "
                f"{plain_peak['gib']:.2f} GiB; time ratio {easel_s / plain_s:.3f}"
            )
        return " | ".join(parts)

    for family in ("sd1", "sdxl"):
        row(f"ControlNet units {family} {sizes[family]}² batch 1")(lambda family=family: controlnets(family))

    def capped() -> str:
        """SDXL 1024² in 8 GiB: the memory mode Easel's planner picks for 8 GiB (the product's path), and fp8
        + medvram, each against the same model whole on the card."""
        from webui.domain.memory_plan import JobShape
        from webui.runtime.cache import DeviceChoice, _disable_offload, _enable_offload
        from webui.runtime.engine import Engine
        from webui.runtime.fp8 import store_in_fp8

        if not cuda:
            return "skipped (CUDA only)"
        model, work, gpu = models["sdxl"], job(1024, 1, steps), torch.device("cuda")
        for other in models.values():
            other.to(torch.device("cpu"))
        model.to(gpu)
        easel_run(model, work)
        full_s, full_rate = best_of(args.runs, lambda: easel_run(model, work))
        model.to(torch.device("cpu"))
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        cap = 8 * 2**30
        torch.cuda.set_per_process_memory_fraction(cap / total)
        engine = Engine(device="cuda", precision="half", attention="sdpa", memory_mode="auto",
                        models_in_ram=1, tokenizer_cache=Path("/tmp/easel-bench-tokenizer"))  # fmt: skip
        plan = engine.plan_memory(model, JobShape("sdxl", 1024, 1024), cap - torch.cuda.memory_allocated())
        results = []
        try:
            model.device = gpu
            if plan.mode == "normal":
                model.to(gpu)
            else:
                _enable_offload(model, DeviceChoice(gpu, dtype, "sdpa", plan.mode))
            easel_run(model, work)
            with peak() as planned_peak:
                seconds, rate = best_of(1, lambda: easel_run(model, work))
            results.append(f"{plan.mode} (the planner's choice) {rate:.1f} it/s, {seconds:.3f} s, peak "
                           f"{planned_peak['gib']:.2f} GiB, {rate / full_rate:.2f}× full speed")  # fmt: skip
            _disable_offload(model)
            model.to(torch.device("cpu"))
            torch.cuda.empty_cache()
            small = build_model("sdxl", "cpu", dtype, False, seed=30)
            store_in_fp8(small, dtype)
            small.device = gpu
            _enable_offload(small, DeviceChoice(gpu, dtype, "sdpa", "medvram"))
            easel_run(small, work)
            with peak() as fp8_peak:
                seconds, rate = best_of(1, lambda: easel_run(small, work))
            results.append(f"fp8 + medvram {rate:.1f} it/s, {seconds:.3f} s, peak {fp8_peak['gib']:.2f} GiB, "
                           f"{rate / full_rate:.2f}×")  # fmt: skip
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        return " | ".join([*results, f"whole on the card, uncapped {full_rate:.1f} it/s, {full_s:.3f} s"])

    row("sdxl 1024² within 8 GiB")(capped)
    report(args, device, time.perf_counter() - started)


def _active(name: str) -> Any:
    from webui.domain.lora import ActiveLora

    return ActiveLora(name, f"/nonexistent/{name}.safetensors", name, 1.0, 1.0)


def report(args: argparse.Namespace, device: str, seconds: float) -> None:
    import diffusers
    import transformers

    card = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "CPU"
    driver = ""
    if device == "cuda":
        with contextlib.suppress(Exception):
            import subprocess

            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    header = (f"{datetime.date.today()} · {card}" + (f" · driver {driver}" if driver else "")
              + f" · torch {torch.__version__} · diffusers {diffusers.__version__} · transformers "
              f"{transformers.__version__}" + (" · SMOKE (tiny models, CPU)" if args.smoke else "")
              + f" · {seconds:.0f} s")  # fmt: skip
    lines = [f"### bench/gpu.py: {header}", "", "| row | result |", "|---|---|"]
    lines += [f"| {name} | {result} |" for name, result in ROWS]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write and not args.smoke:
        with (REPO / "bench" / "RESULTS.md").open("a", encoding="utf-8") as handle:
            handle.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
