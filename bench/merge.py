"""Checkpoint merger: wall time and peak RSS of a weighted sum of two SD1.5-shaped fp16 files.

Two checkpoints with SD1.5's published keys and shapes (``tests/fixtures/real_layouts.py``, A1111/LDM
layout, random fp16 data, ``position_ids`` int64; about 2.0 GiB each) are written to
``/tmp/easel-bench-merge/models/Stable-diffusion`` by a child process, one tensor at a time. Each
measurement then runs in a fresh child:

* ``streamed``: ``webui.runtime.merge`` (``plan_merge`` + ``write_merge``), weighted sum α = 0.3, fp16 out;
* ``service``: the same merge through ``MergeService.merge`` (titles resolved, both inputs hashed for the
  recipe, metadata, the list refreshed), as the tab and ``POST /easel/v1/merge`` run it;
* ``in-memory``: the way A1111 does it, for comparison: both files loaded whole
  (``safetensors.torch.load_file``), merged key by key, saved with ``save_file``.

Each child reports its RSS after imports (baseline), ``ru_maxrss`` and ``VmHWM`` at the end and the highest
``VmRSS`` seen by a 10 ms sampler thread. Nothing is subtracted; the ratio is peak RSS / size of one input
file (target ≤ 1.5).

    python bench/merge.py                      # all three, write the inputs if missing
    python bench/merge.py --only streamed      # one way
    python bench/merge.py --cleanup            # delete /tmp/easel-bench-merge afterwards
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WORK = Path("/tmp/easel-bench-merge")
FOLDER = WORK / "models" / "Stable-diffusion"
INPUTS = (FOLDER / "sd15-random-a.safetensors", FOLDER / "sd15-random-b.safetensors")
WAYS = ["streamed", "service", "in-memory"]
ALPHA = 0.3
GIB = 1024**3


def status_kib(*fields: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in fields:
                out[name] = int(rest.split()[0])
    return out


class RssSampler(threading.Thread):
    """Polls VmRSS every ``interval`` seconds and keeps the highest value."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, status_kib("VmRSS")["VmRSS"])
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


# -- child: write the inputs ------------------------------------------------------------------------------


def write_inputs() -> None:
    import torch

    from tests.fixtures.real_layouts import real_shapes

    shapes = real_shapes("sd1")
    FOLDER.mkdir(parents=True, exist_ok=True)
    for seed, path in enumerate(INPUTS):
        if path.exists():
            continue
        generator = torch.Generator().manual_seed(seed)
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        kinds = {}
        for key, shape in shapes.items():
            kinds[key] = "I64" if key.endswith("position_ids") else "F16"
            count = 1
            for dim in shape:
                count *= dim
            size = count * (8 if kinds[key] == "I64" else 2)
            header[key] = {"dtype": kinds[key], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw)
            for key, shape in shapes.items():
                if kinds[key] == "I64":
                    tensor = torch.arange(shape[-1], dtype=torch.int64).expand(*shape).contiguous()
                else:
                    tensor = (torch.randn(*shape, generator=generator) * 0.05).half()
                handle.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        partial.rename(path)


# -- child: one measurement -------------------------------------------------------------------------------


def measure(way: str) -> dict[str, Any]:
    import torch

    if way == "service":
        from webui.container import build_services
        from webui.settings import Settings

        services = build_services(Settings(data_dir=WORK, preload_model=False))
        services.models.hashes.stop_background(wait=30)
        import webui.runtime.merge  # noqa: F401  (imported before the baseline, like the other ways)
    elif way == "streamed":
        from webui.runtime.merge import plan_merge, write_merge
    else:
        from safetensors.torch import load_file, save_file
    output = FOLDER / f"merged-{way}.safetensors"
    output.unlink(missing_ok=True)
    baseline = status_kib("VmRSS")["VmRSS"]
    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    if way == "service":
        services.merge.merge(  # type: ignore[union-attr]
            INPUTS[0].name, INPUTS[1].name, multiplier=ALPHA, name=output.stem, precision="fp16"
        )
    elif way == "streamed":
        write_merge(plan_merge(*INPUTS, precision="fp16"), output, alpha=ALPHA)
    else:
        a, b = load_file(str(INPUTS[0])), load_file(str(INPUTS[1]))
        for key, tensor in a.items():
            if "model" in key and key in b and tensor.is_floating_point():
                a[key] = ((1 - ALPHA) * tensor.float() + ALPHA * b[key].float()).half()
        del b
        save_file(a, str(output), metadata={"format": "pt"})
    seconds = time.perf_counter() - started
    sampled = sampler.stop()
    end = status_kib("VmHWM")
    size = output.stat().st_size
    output.unlink()
    return {
        "way": way,
        "seconds": seconds,
        "input_bytes": INPUTS[0].stat().st_size,
        "output_bytes": size,
        "baseline_kib": baseline,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vmhwm_kib": end["VmHWM"],
        "sampled_kib": sampled,
        "threads": torch.get_num_threads(),
    }


# -- parent -----------------------------------------------------------------------------------------------


def child(*args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"child {args} failed with exit code {done.returncode}")
    return done.stdout


def report(results: list[dict[str, Any]]) -> None:
    print()
    print("| way | wall s | input file GiB | baseline RSS GiB | peak RSS GiB (ru_maxrss / VmHWM / sampled) "
          "| peak / one input |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in results:
        size = r["input_bytes"] / GIB
        peak = max(r["ru_maxrss_kib"], r["vmhwm_kib"]) * 1024 / GIB
        print(
            f"| {r['way']} | {r['seconds']:.1f} | {size:.3f} | {r['baseline_kib'] * 1024 / GIB:.3f} "
            f"| {r['ru_maxrss_kib'] * 1024 / GIB:.3f} / {r['vmhwm_kib'] * 1024 / GIB:.3f} / "
            f"{r['sampled_kib'] * 1024 / GIB:.3f} | {peak / size:.2f} |"
        )
    sizes = ", ".join(f"{r['way']} {r['output_bytes'] / GIB:.3f} GiB" for r in results)
    print(f"\noutput files: {sizes}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=WAYS, action="append")
    parser.add_argument("--cleanup", action="store_true", help="delete the inputs when done")
    parser.add_argument("--child", choices=["write", *WAYS], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "write":
        write_inputs()
        return
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    if not all(path.exists() for path in INPUTS):
        started = time.perf_counter()
        child("--child", "write")
        print(f"wrote the inputs in {time.perf_counter() - started:.1f} s")
    results = []
    for way in args.only or WAYS:
        results.append(json.loads(child("--child", way).strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    report(results)
    if args.cleanup:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
