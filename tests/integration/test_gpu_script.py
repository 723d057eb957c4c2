"""``bench/gpu.py --smoke``: every row of the GPU script runs on tiny models on the CPU.

A lent GPU's minutes are few; a script that breaks there (an import that moved, a unit record that grew a
field) spends them on a traceback. Each row catches its own error and prints ``FAILED``, so the run is
checked row by row here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = (  # one name part per kind of row the issue asks for
    "sd1 64² batch 1, 3 steps, eager",
    "sdxl 64² batch 4, 3 steps, eager",
    "compiled UNet + CUDA graphs",
    "compiled UNet, no CUDA graphs",
    "VAE decode",
    "host-device syncs, Euler a",
    "profile: sd1",
    "LoRA switch",
    "RAM→VRAM switch",
    "refiner sdxl",
    "fp8 storage",
    "IP-Adapter unit",
    "ControlNet units sd1",
    "ControlNet units sdxl",
    "within 8 GiB",
)


@pytest.mark.slow
def test_every_row_of_the_gpu_script_runs_on_tiny_models() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--no-write", "--runs", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    failed = [line for line in table if "FAILED" in line]
    assert not failed, "\n".join(failed) + done.stderr[-3000:]
    names = [line.split(" | ")[0] for line in table]
    missing = [name for name in ROWS if not any(name in row for row in names)]
    assert not missing, f"rows missing: {missing}; the table has: {names}"
