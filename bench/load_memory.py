"""Peak RSS while loading an SD1.5-shaped fp16 single-file checkpoint onto the CPU in fp32.

The checkpoint (random weights, SD1.5's published shapes, A1111/LDM key layout, fp16, about 2.1 GB) is
written once to ``/tmp/easel-bench/`` by a child process. Every measurement then runs in a fresh child:

* ``easel``: ``webui.runtime.loader.load_checkpoint`` on the record ``scan_checkpoints`` gives;
* ``plain``: ``StableDiffusionPipeline.from_single_file`` with the bundled sd1 configs and Easel's tokenizer.

Each child reports its RSS after imports (baseline), ``ru_maxrss`` at the end, ``VmHWM`` from
``/proc/self/status``, and the highest ``VmRSS`` seen by a 10 ms sampler thread, split into anonymous
memory and file-backed pages at that moment. Nothing is subtracted; the
ratio is peak RSS / bytes of the loaded fp32 parameters.

    python bench/load_memory.py                  # both loaders, write the file if missing
    python bench/load_memory.py --only easel     # one loader
    python bench/load_memory.py --cleanup        # delete /tmp/easel-bench afterwards
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "bench"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

WORK = Path("/tmp/easel-bench")
CHECKPOINT = WORK / "checkpoints" / "sd15-random-fp16.safetensors"
TOKENIZER_CACHE = WORK / "tokenizer"
SD1_CONFIGS = REPO / "webui" / "runtime" / "configs" / "sd1"
GIB = 1024**3
LOADERS = ["easel", "plain"]


def status_kib(*fields: str) -> dict[str, int]:
    """Selected ``/proc/self/status`` fields in KiB."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in fields:
                out[name] = int(rest.split()[0])
    return out


class RssSampler(threading.Thread):
    """Polls VmRSS every ``interval`` seconds and keeps the highest value with its anon/file split."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak: dict[str, int] = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            now = status_kib("VmRSS", "RssAnon", "RssFile")
            if now["VmRSS"] > self.peak["VmRSS"]:
                self.peak = now
            time.sleep(self.interval)

    def stop(self) -> dict[str, int]:
        self._stop_event.set()
        self.join()
        return self.peak


# -- child: write the checkpoint --------------------------------------------------------------------------


def write_checkpoint() -> None:
    import torch
    from sd15_random import sd15_components

    from webui.runtime.ldm_layout import diffusers_to_ldm_state_dict, save_single_file

    parts = sd15_components()
    state = diffusers_to_ldm_state_dict(
        unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"], family="sd1"
    )
    del parts
    tmp = CHECKPOINT.with_suffix(".partial")
    save_single_file(tmp, state, dtype=torch.float16)
    tmp.rename(CHECKPOINT)


# -- child: one measurement -------------------------------------------------------------------------------


def measure(which: str) -> dict[str, Any]:
    import torch
    from diffusers import StableDiffusionPipeline

    from webui.registry.scanner import scan_checkpoints
    from webui.runtime.loader import load_checkpoint
    from webui.runtime.tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer(TOKENIZER_CACHE)
    baseline = status_kib("VmRSS", "VmHWM")
    baseline_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    if which.startswith("easel"):
        record = next(r for r in scan_checkpoints(CHECKPOINT.parent) if r.name == CHECKPOINT.name)
        model = load_checkpoint(record, dtype=torch.float32, tokenizer_cache=TOKENIZER_CACHE)
        modules = model.modules()
    else:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_single_file(
            str(CHECKPOINT),
            config=str(SD1_CONFIGS),
            torch_dtype=torch.float32,
            local_files_only=True,
            tokenizer=tokenizer,
            safety_checker=None,
            requires_safety_checker=False,
        )
        modules = [pipe.unet, pipe.vae, pipe.text_encoder]
    seconds = time.perf_counter() - started
    sampled = sampler.stop()
    end = status_kib("VmRSS", "VmHWM", "RssAnon", "RssFile")
    dtypes = sorted({str(p.dtype) for m in modules for p in m.parameters()})
    param_bytes = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    return {
        "loader": which,
        "seconds": seconds,
        "param_bytes": param_bytes,
        "dtypes": dtypes,
        "baseline_rss_kib": baseline["VmRSS"],
        "baseline_maxrss_kib": baseline_maxrss,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vmhwm_kib": end["VmHWM"],
        "end_rss_kib": end["VmRSS"],
        "end_anon_kib": end["RssAnon"],
        "end_file_kib": end["RssFile"],
        "sampled_peak_kib": sampled["VmRSS"],
        "sampled_peak_anon_kib": sampled["RssAnon"],
        "sampled_peak_file_kib": sampled["RssFile"],
    }


# -- parent -----------------------------------------------------------------------------------------------


def child(*args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"child {args} failed with exit code {done.returncode}")
    return done.stdout


def gib(kib: int) -> float:
    return kib * 1024 / GIB


def report(results: list[dict[str, Any]]) -> None:
    print()
    print(
        "| loader | load s | fp32 params GiB | baseline RSS GiB | ru_maxrss GiB | VmHWM GiB "
        "| sampled peak GiB (anon + file) | peak / params | (peak - baseline) / params |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        params = r["param_bytes"] / GIB
        peak = gib(max(r["ru_maxrss_kib"], r["vmhwm_kib"]))
        base = gib(r["baseline_rss_kib"])
        print(
            f"| {r['loader']} | {r['seconds']:.1f} | {params:.3f} | {base:.3f} "
            f"| {gib(r['ru_maxrss_kib']):.3f} "
            f"| {gib(r['vmhwm_kib']):.3f} | {gib(r['sampled_peak_kib']):.3f} "
            f"({gib(r['sampled_peak_anon_kib']):.3f} + {gib(r['sampled_peak_file_kib']):.3f}) "
            f"| {peak / params:.3f} | {(peak - base) / params:.3f} |"
        )
    print()
    for r in results:
        print(
            f"{r['loader']}: parameter dtypes {r['dtypes']}, RSS at end {gib(r['end_rss_kib']):.3f} GiB "
            f"(anon {gib(r['end_anon_kib']):.3f}, file {gib(r['end_file_kib']):.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=LOADERS, default=None)
    parser.add_argument("--repeat", type=int, default=1, help="measurements per loader")
    parser.add_argument("--cleanup", action="store_true", help="delete /tmp/easel-bench at the end")
    parser.add_argument("--child", choices=["write", *LOADERS], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "write":
        write_checkpoint()
        return
    if args.child:
        print(json.dumps(measure(args.child)))
        return

    if not CHECKPOINT.exists():
        CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        child("--child", "write")
        print(
            f"wrote {CHECKPOINT} ({CHECKPOINT.stat().st_size / GIB:.3f} GiB) in "
            f"{time.perf_counter() - started:.0f}s"
        )
    else:
        print(f"using {CHECKPOINT} ({CHECKPOINT.stat().st_size / GIB:.3f} GiB)")
    loaders = [args.only] if args.only else ["easel", "plain"]
    results = []
    for _ in range(args.repeat):
        for which in loaders:
            out = child("--child", which)
            results.append(json.loads(out.strip().splitlines()[-1]))
    report(results)
    if args.cleanup:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
