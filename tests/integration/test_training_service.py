"""Training runs through the service, as the Train tab and the API start them: the dataset is staged and
checked, the trainer runs in its own process, progress and samples come back, the LoRA lands in the list,
and Stop, Cancel, a crashing trainer and bad input end as the user expects."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from safetensors import safe_open

from webui.domain.training import RunState, TrainSettings
from webui.services.training import TrainingRequestError, TrainingService, Upload


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


UPLOADS = [
    Upload("red.png", _png((220, 20, 20)), "zwx ball, red"),
    Upload("blue.png", _png((20, 20, 220)), None),
    Upload("wide.png", _png((20, 200, 20), (128, 64)), "zwx ball, green"),
]


def _settings(**changes: Any) -> TrainSettings:
    values: dict[str, Any] = {
        "name": "zwx-ball", "model": "tiny-sd15", "trigger": "zwx", "class_word": "ball", "steps": 4,
        "rank": 4, "alpha": 4.0, "resolution": 64, "learning_rate": 1e-2, "sample_every": 2,
        "sample_steps": 2, "seed": 5,
    }  # fmt: skip
    values.update(changes)
    return TrainSettings(**values)


def _wait(run: Any, timeout: float = 240) -> None:
    run._future.result(timeout=timeout)


def _wait_for_step(run: Any, step: int = 1, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while run.step < step:
        assert not run.state.finished, f"the run ended early: {run.state} {run.error}"
        assert time.monotonic() < deadline, f"no step {step} in {timeout} s: {run.status}"
        time.sleep(0.05)


def test_a_run_trains_samples_saves_and_refreshes_the_lora_list(services: Any) -> None:
    training = services.training
    lora_dir = services.settings.lora_path
    run = training.start(_settings(), uploads=UPLOADS)
    assert run.state in (RunState.QUEUED, RunState.RUNNING)
    assert run.summary["images"] == 3 and run.summary["readout"].startswith("4 steps = ")
    assert run.summary["buckets"] == [{"width": 64, "height": 64, "images": 3}]  # area <= 64², no upscaling
    _wait(run)
    assert run.state is RunState.DONE, run.error
    assert run.step == 4 and len(run.losses) == 4 and all(loss > 0 for loss in run.losses)
    assert run.result == "zwx-ball.safetensors" and run.peak_memory and run.peak_memory > 0
    # baseline before step 1, every 2 steps, the end: one image per sample prompt ("zwx ball")
    assert [sample["step"] for sample in run.samples] == [0, 2, 4]
    for sample in run.samples:
        (path,) = sample["paths"]
        assert Image.open(path).size == (64, 64)
    assert run.settings.sample_prompts == ["zwx ball"] and run.settings.train_text_encoder is True

    target = lora_dir / "zwx-ball.safetensors"
    with safe_open(str(target), framework="pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_steps"] == "4"
    assert json.loads(metadata["ss_tag_frequency"])["zwx-ball"] == {"zwx ball": 3, "red": 1, "green": 1}
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert len(metadata["sshs_model_hash"]) == 64 and len(metadata["sshs_legacy_hash"]) == 8
    assert any(key.startswith("lora_te_") for key in keys)
    sidecar = json.loads(target.with_suffix(".json").read_text())
    assert sidecar["activation text"] == "zwx" and sidecar["sd version"] == "SD1"
    assert json.loads(target.with_suffix(".training.json").read_text())["settings"]["steps"] == 4
    assert "zwx-ball" in services.networks.lora_names()  # refreshed without a click
    raw = target.read_bytes()  # the precomputed hash is the tensor data's sha256, as A1111 computes it
    data = raw[8 + int.from_bytes(raw[:8], "little") :]
    assert metadata["sshs_model_hash"] == hashlib.sha256(data).hexdigest()
    assert services.networks.record("zwx-ball").short_hash == metadata["sshs_model_hash"][:12]

    # the run is remembered across a restart, and its name is now taken
    again = TrainingService(
        root=training.root, lora_dir=lora_dir, tokenizer_cache=training.tokenizer_cache,
        models=services.models, generation=services.generation,
    )  # fmt: skip
    assert again.get(run.id).to_json()["state"] == "done" and again.get(run.id).losses == run.losses
    with pytest.raises(TrainingRequestError, match="already exists"):
        training.start(_settings(), uploads=UPLOADS)


def test_stop_saves_what_was_learnt_and_cancel_keeps_nothing(services: Any) -> None:
    training = services.training
    lora_dir = services.settings.lora_path
    stopped = training.start(_settings(name="stopped", steps=500, sample_every=0), uploads=UPLOADS)
    _wait_for_step(stopped, 2)
    text = services.generation.progress.snapshot()
    assert "Training stopped" in json.dumps(text)  # the generation progress says who holds the device
    training.stop(stopped.id)
    _wait(stopped)
    assert stopped.state is RunState.STOPPED and 2 <= stopped.step < 500
    with safe_open(str(lora_dir / "stopped.safetensors"), framework="pt") as handle:
        assert handle.metadata()["ss_steps"] == str(stopped.step)

    cancelled = training.start(_settings(name="cancelled", steps=500, sample_every=0), uploads=UPLOADS)
    queued = training.start(_settings(name="queued", steps=500, sample_every=0), uploads=UPLOADS)
    training.cancel(queued.id)  # still waiting behind the first: never starts
    assert queued.state is RunState.CANCELLED
    _wait_for_step(cancelled, 1)
    training.cancel(cancelled.id)
    _wait(cancelled)
    assert cancelled.state is RunState.CANCELLED and cancelled.result is None
    assert sorted(path.name for path in lora_dir.iterdir() if path.suffix == ".safetensors") == [
        "stopped.safetensors"
    ]
    assert queued.step == 0 and not (lora_dir / "queued.safetensors").exists()
    # the queue goes on: generation works after training
    from webui.domain.generation import Txt2ImgRequest

    result = services.generation.submit_txt2img(
        Txt2ImgRequest(prompt="a ball", steps=2, width=64, height=64, seed=1, save_images=False)
    ).result(timeout=120)
    assert Image.open(io.BytesIO(result.images[0].png_bytes)).size == (64, 64)


def test_a_crashing_trainer_fails_the_run_and_the_server_goes_on(services: Any) -> None:
    training = services.training
    training.worker_command = [sys.executable, "-c", "import sys; sys.stdin.readline(); sys.exit(3)"]
    run = training.start(_settings(name="crash"), uploads=UPLOADS)
    _wait(run)
    assert run.state is RunState.FAILED and "exit code 3" in run.error
    assert not services.generation.progress.busy


def test_bad_input_is_refused_with_what_to_change(services: Any, tmp_path: Path) -> None:
    training = services.training
    root = training.root
    before = sorted(root.iterdir()) if root.exists() else []
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "no images"),
        ({"uploads": [Upload("x.png", b"not an image")]}, "not a readable image"),
        ({"uploads": [Upload("tiny.png", _png((1, 2, 3), (32, 32)))]}, "at least 64 pixels"),
        ({"folder": tmp_path / "missing"}, "does not exist"),
    ]
    for kwargs, message in cases:
        with pytest.raises(TrainingRequestError, match=message):
            training.start(_settings(), **kwargs)
    with pytest.raises(TrainingRequestError, match="cannot be a LoRA file name"):
        training.start(_settings(name="../escape"), uploads=UPLOADS)
    with pytest.raises(TrainingRequestError, match="not found"):
        training.start(_settings(model="no-such-model"), uploads=UPLOADS)
    with pytest.raises(TrainingRequestError, match="warm-up"):
        training.start(_settings(warmup_steps=4), uploads=UPLOADS)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../outside.png", _png((1, 1, 1)))
    with pytest.raises(TrainingRequestError, match="outside its folder"):
        training.start(_settings(), zips=[evil])
    assert (sorted(root.iterdir()) if root.exists() else []) == before  # nothing staged is left behind
    assert not list(services.settings.lora_path.glob("*.safetensors"))


def test_a_zip_keeps_kohya_folders_and_captions(services: Any, tmp_path: Path) -> None:
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("my set/10_zwx ball/a.png", _png((200, 10, 10)))
        handle.writestr("my set/10_zwx ball/a.txt", "zwx ball, shiny")
        handle.writestr("my set/b.png", _png((10, 10, 200)))
        handle.writestr("__MACOSX/._b.png", b"junk")
    _run_id, run_dir = services.training.new_run_dir()
    services.training.stage(run_dir / "dataset", zips=[archive])
    summary = services.training.summarize(run_dir / "dataset", _settings(), 64)
    assert summary.images == 2 and summary.samples_per_epoch == 11
    assert dict(summary.captions) == {"b.png": "zwx ball", "a.png": "zwx ball, shiny"}


def test_a_stopped_run_resumes_to_the_end(services: Any) -> None:
    training = services.training
    run = training.start(_settings(name="resumed", steps=16, sample_every=0), uploads=UPLOADS)
    _wait_for_step(run, 2)
    with pytest.raises(TrainingRequestError, match="stop or cancel it before deleting"):
        training.delete(run.id)
    training.stop(run.id)
    _wait(run)
    assert run.state is RunState.STOPPED and run.step < 16 and run.resumable
    stopped_at = run.step
    other = training.start(_settings(name="other", steps=1, sample_every=0), uploads=UPLOADS)
    with pytest.raises(TrainingRequestError, match="only a stopped run"):
        training.resume(other.id)  # still queued
    training.cancel(other.id)
    training.resume(run.id)
    _wait(run)
    assert run.state is RunState.DONE, run.error
    assert run.step == 16 and len(run.losses) == 16 and stopped_at < 16 and not run.resumable
    with safe_open(str(services.settings.lora_path / "resumed.safetensors"), framework="pt") as handle:
        assert handle.metadata()["ss_steps"] == "16"


def test_a_trainer_warning_is_said_again_in_the_final_status(services: Any, tmp_path: Path) -> None:
    """A stop that could not keep its state (disk) says so after "Saved ...", not only while it saves."""
    from webui.services.training_runs import TrainingRun

    run = TrainingRun(
        id="0123456789ab", settings=_settings(), model_title="tiny-sd15", family="SD 1.x",
        run_dir=tmp_path / "run", dataset_dir=tmp_path / "run" / "dataset", state=RunState.RUNNING,
    )  # fmt: skip
    training = services.training
    training._on_event(run, {"event": "warning", "text": "the training state was not kept"})
    assert run.status == "Warning: the training state was not kept"
    training._on_event(run, {"event": "status", "text": "Saving the checkpoint"})
    training._on_event(run, {"event": "done", "path": "/m/zwx-ball.safetensors", "stopped": True})
    assert run.status == "Saved zwx-ball.safetensors. Warning: the training state was not kept"
    assert run._outcome is RunState.STOPPED
