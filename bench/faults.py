"""Faults, many times over: interrupt/skip at random steps, and SIGKILL during saves.

* ``interrupts``: on the shipped reference model (64×64), a reference request is generated alone; then, per
  trial, a random job (txt2img or hires fix, batch 1–2, 1–2 batches, a random sampler, seed and step count)
  is interrupted or skipped at a random step and the reference request runs again. Counted: trials whose
  next job is byte-identical to the reference.
* ``kills``: a child process saves PNGs with parameters into one folder in a loop and is killed with SIGKILL
  at a random moment; then the start-up sweep runs. Counted per trial: temp files left (before and after the
  sweep), numbered files that are empty, unreadable or without parameters, gaps or repeats in the numbering,
  and whether the next save got the next number.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/faults.py                       # 50 interrupt trials, 50 kills
    HF_HUB_OFFLINE=1 .venv/bin/python bench/faults.py --interrupts 10 --kills 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REFERENCE = {
    "prompt": "a red circle on a blue background",
    "seed": 1234,
    "width": 64,
    "height": 64,
    "steps": 6,
}

_SAVER = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from webui.metadata.image_io import encode_image, save_image_atomic

folder, rng = Path(sys.argv[1]), np.random.default_rng(int(sys.argv[2]))
seed = 0
while True:
    pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    save_image_atomic(encode_image(Image.fromarray(pixels), f"a cat\\nSteps: 1, Seed: {seed}", "png"),
                      folder, seed, "png")
    seed += 1
"""


def interrupt_trials(trials: int, seed: int) -> dict[str, Any]:
    from webui.container import build_services
    from webui.domain.generation import Txt2ImgRequest
    from webui.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="easel-faults-"))
    try:
        checkpoints = root / "models" / "Stable-diffusion"
        checkpoints.mkdir(parents=True)
        shutil.copytree(
            REPO / "models" / "Stable-diffusion" / "easel-reference", checkpoints / "easel-reference"
        )
        services = build_services(Settings(data_dir=root, preload_model=False))
        generation = services.generation
        try:
            alone = generation.txt2img(Txt2ImgRequest(**REFERENCE, save_images=False)).images[0].png_bytes
            rng = random.Random(seed)
            original = generation.progress.step
            exact, actions = 0, {"interrupt": 0, "skip": 0}
            started = time.perf_counter()
            for _ in range(trials):
                fields: dict[str, Any] = {
                    "prompt": f"a {rng.choice(['green', 'purple'])} {rng.choice(['square', 'triangle'])}",
                    "seed": rng.randrange(1 << 30),
                    "width": 64,
                    "height": 64,
                    "steps": rng.randint(2, 6),
                    "sampler_name": rng.choice(["Euler a", "DPM++ 2M", "DDIM", "Euler"]),
                    "batch_size": rng.choice([1, 2]),
                    "n_iter": rng.choice([1, 2]),
                    "save_images": False,
                }
                if rng.random() < 0.2:
                    fields.update(
                        enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.6
                    )
                request = Txt2ImgRequest(**fields)
                at, action = rng.randint(1, request.steps), rng.choice(["interrupt", "skip"])
                actions[action] += 1
                fired = [False]

                def step(
                    step: int, steps: int, textinfo: str | None = None, at=at, action=action, fired=fired
                ):
                    original(step, steps, textinfo)
                    if step >= min(at, steps) and not fired[0]:
                        fired[0] = True
                        getattr(generation, action)()

                generation.progress.step = step  # type: ignore[method-assign]
                try:
                    generation.txt2img(request)
                finally:
                    generation.progress.step = original  # type: ignore[method-assign]
                after = generation.txt2img(Txt2ImgRequest(**REFERENCE, save_images=False))
                exact += int(after.images[0].png_bytes == alone and not after.interrupted)
            seconds = time.perf_counter() - started
        finally:
            generation.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"trials": trials, "next_job_exact": exact, **actions, "seconds": round(seconds, 1)}


def kill_trials(trials: int, seed: int) -> dict[str, Any]:
    from PIL import Image

    from webui.metadata.image_io import read_infotext, save_image_atomic, sweep_temp_files

    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="easel-kills-"))
    folder = root / "outputs" / "txt2img-images" / "2026-01-01"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    totals = {
        "trials": trials,
        "temp_files_left_by_kills": 0,
        "temp_files_after_sweep": 0,
        "bad_files": 0,
        "numbering_errors": 0,
        "next_number_wrong": 0,
        "files_checked": 0,
    }
    try:
        for trial in range(trials):
            child = subprocess.Popen(
                [sys.executable, "-c", _SAVER, str(folder), str(trial)], env=env, cwd=REPO
            )
            before = _count(folder)
            deadline = time.monotonic() + 60
            while _count(folder) < before + 2 and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.08))
            child.send_signal(signal.SIGKILL)
            child.wait()
            temps = [p for p in folder.iterdir() if p.name.startswith(".easel-tmp-")]
            totals["temp_files_left_by_kills"] += len(temps)
            sweep_temp_files(root / "outputs")
            totals["temp_files_after_sweep"] += sum(1 for p in folder.iterdir() if not p.name[:5].isdigit())
            numbered = sorted(p for p in folder.iterdir() if p.name[:5].isdigit())
            numbers = [int(p.name[:5]) for p in numbered]
            if numbers != list(range(len(numbers))):
                totals["numbering_errors"] += 1
            for path in numbered[before:]:
                totals["files_checked"] += 1
                try:
                    with Image.open(path) as image:
                        image.load()
                    ok = path.stat().st_size > 0 and "Seed:" in (read_infotext(path)[0] or "")
                except Exception:
                    ok = False
                totals["bad_files"] += int(not ok)
            probe = save_image_atomic(b"probe", folder, 0, "png")
            totals["next_number_wrong"] += int(probe.name != f"{len(numbers):05d}-0.png")
            probe.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return totals


def _count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.name[:5].isdigit()) if folder.exists() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interrupts", type=int, default=50)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args(argv)
    summary: dict[str, Any] = {}
    if args.kills:
        summary["kills"] = kill_trials(args.kills, args.seed)
        print(json.dumps({"kills": summary["kills"]}), flush=True)
    if args.interrupts:
        summary["interrupts"] = interrupt_trials(args.interrupts, args.seed)
        print(json.dumps({"interrupts": summary["interrupts"]}), flush=True)
    kills, interrupts = summary.get("kills"), summary.get("interrupts")
    ok = (
        kills is None
        or (
            kills["temp_files_after_sweep"]
            == kills["bad_files"]
            == kills["numbering_errors"]
            == kills["next_number_wrong"]
            == 0
        )
    ) and (interrupts is None or interrupts["next_job_exact"] == interrupts["trials"])
    print(json.dumps({**summary, "passed": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
