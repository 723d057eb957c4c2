"""A small run of ``bench/load.py``: 3 clients × 4 requests at once against a real server on loopback (two
over REST, one through the UI's Gradio API), mixing txt2img, img2img, inpaint, hires fix, ControlNet and LoRA
jobs on two checkpoints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "load.py"


def _bench():
    spec = importlib.util.spec_from_file_location("easel_bench_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_plan_mixes_every_kind_with_its_own_checkpoint_lora_and_seed() -> None:
    load = _bench()
    jobs = [job for jobs in load.plan(3, 4) for job in jobs]
    assert {job.kind for job in jobs} == set(load.KINDS)
    assert len({job.body["seed"] for job in jobs}) == len(jobs)
    assert {job.body["override_settings"]["sd_model_checkpoint"] for job in jobs} == set(load.CHECKPOINTS)
    assert all(f"<lora:{load.LORA}:" in job.body["prompt"] for job in jobs if job.kind == "lora")
    assert all("mask" in job.body for job in jobs if job.kind == "inpaint")
    assert load.plan(3, 4)[1][2].body == jobs[6].body  # the same seed plans the same run


def test_infotext_check_catches_a_job_that_got_another_requests_settings() -> None:
    load = _bench()
    job = load.plan(1, 1)[0][0]
    other = load.plan(1, 2, seed=7)[0][1]
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from webui.metadata.infotext import build_infotext

    body = other.body  # the answer carries someone else's parameters
    params = {
        "Steps": body["steps"],
        "Sampler": body["sampler_name"],
        "CFG scale": body["cfg_scale"],
        "Seed": body["seed"],
        "Size": "64x64",
        "Model": body["override_settings"]["sd_model_checkpoint"],
    }
    text = build_infotext(body["prompt"], body["negative_prompt"], params)
    info = PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG", pnginfo=info)
    job.images, job.infotexts = [buffer.getvalue()], [text]
    problems = load.infotext_problems(job)
    assert any(p.startswith("Seed:") for p in problems) and any(p.startswith("Prompt:") for p in problems)


@pytest.mark.slow
def test_three_clients_by_four_jobs_lose_nothing_and_match_a_serial_run(tmp_path: Path) -> None:
    load = _bench()
    summary = load.run(3, 4, steps=3, keep=tmp_path / "load", quiet=True, time_limit=600, gradio_clients=1)
    assert summary["answered"] == 12, summary["failed"]
    assert set(summary["kinds"]) == set(load.KINDS)
    assert summary["via_gradio"] == 4  # one client through the UI's Gradio API, two over REST
    assert summary["infotext_mismatches"] == {}
    assert summary["pixels_equal_serial"] == 12, summary["pixels_differ_from_serial"]
    assert summary["files_saved"] == summary["images_returned"] == 12
    assert summary["files_lost"] == summary["files_unexpected"] == summary["duplicate_numbers"] == 0
    assert summary["files_unreadable"] == summary["stray_files"] == []
    assert load.passed(summary)
