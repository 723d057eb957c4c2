"""Faults during jobs, over the REST API: a full disk, running out of memory, and a checkpoint deleted,
truncated or replaced while it is listed. Each failing job gets a message that says what happened and what to
do; the server keeps serving, and the next job (after the fault is gone) works."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui.container import build_services
from webui.settings import Settings

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 11, "prompt": "a red circle"}
FILE = "tiny-sd15.safetensors"
FOLDER = "tiny-sd15-diffusers"


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    from webui.server import build_app

    single = data_dir / "models" / "Stable-diffusion" / FILE
    data = single.read_bytes()  # a copy of its own: these tests damage the file (it may be a hard link)
    single.unlink()
    single.write_bytes(data)
    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as test_client:
        test_client.services = services  # type: ignore[attr-defined]
        yield test_client
    services.generation.shutdown()


def _txt2img(client: TestClient, checkpoint: str = FILE, **fields: object):
    body = {**SMALL, "override_settings": {"sd_model_checkpoint": checkpoint}, **fields}
    return client.post("/sdapi/v1/txt2img", json=body)


def _works(client: TestClient, checkpoint: str = FILE, **fields: object) -> dict:
    response = _txt2img(client, checkpoint, **fields)
    assert response.status_code == 200, response.text
    return response.json()


def _pixels(payload: dict) -> bytes:
    with Image.open(io.BytesIO(base64.b64decode(payload["images"][0]))) as image:
        return image.convert("RGB").tobytes()


def _outputs(client: TestClient) -> list[Path]:
    root = client.services.settings.outputs_path  # type: ignore[attr-defined]
    return sorted(p for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------- disk full


class _FillsUp:
    """A file object that writes half of what it is given, then finds the disk full."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def write(self, data) -> int:
        self._handle.write(bytes(data)[: len(data) // 2])
        self._handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def test_disk_full_fails_the_job_with_a_message_and_the_next_job_saves(
    client: TestClient, monkeypatch
) -> None:
    expected = _works(client)  # the model is loaded; nothing saved (the API saves when asked)
    real_fdopen = os.fdopen
    monkeypatch.setattr("os.fdopen", lambda fd, *a, **k: _FillsUp(real_fdopen(fd, *a, **k)))

    response = _txt2img(client, save_images=True)
    assert response.status_code >= 400
    detail = response.json()["detail"]
    outputs = client.services.settings.outputs_path  # type: ignore[attr-defined]
    assert "disk is full" in detail and str(outputs / "txt2img-images") in detail, detail
    assert "Free some space" in detail
    assert _outputs(client) == [], "a half-written file was left"

    monkeypatch.undo()  # the disk has room again
    assert client.get("/sdapi/v1/progress").status_code == 200
    payload = _works(client, save_images=True)
    assert _pixels(payload) == _pixels(expected)
    saved = _outputs(client)
    assert [p.name for p in saved] == ["00000-11.png"]
    with Image.open(saved[0]) as image:
        assert image.info["parameters"] == json.loads(payload["info"])["infotexts"][0]


# --------------------------------------------------------------------------------------------- memory


def _cuda_out_of_memory() -> BaseException:
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize(
    "make_error",
    [
        pytest.param(_cuda_out_of_memory, id="cuda"),
        pytest.param(lambda: RuntimeError("CUDA error: out of memory"), id="runtime-error"),
        pytest.param(None, id="cpu-allocator"),  # a real failed allocation on the CPU
    ],
)
def test_out_of_memory_gives_a_message_and_the_next_job_runs(client: TestClient, make_error) -> None:
    import torch

    expected = _works(client)
    engine = client.services.generation.engine()  # type: ignore[attr-defined]
    real_generate = engine.generate
    calls = []

    def generate_once_out_of_memory(*args, **kwargs):
        calls.append(1)
        engine.generate = real_generate  # once
        if make_error is None:
            torch.empty(1 << 56, dtype=torch.uint8)  # more than any machine has: the allocator refuses
        raise make_error()

    engine.generate = generate_once_out_of_memory
    response = _txt2img(client)
    assert calls and response.status_code >= 400
    detail = response.json()["detail"]
    assert detail.startswith("Out of memory.") and "--medvram" in detail and "batch size" in detail, detail

    progress = client.get("/sdapi/v1/progress").json()
    assert progress["state"]["job"] == "" and progress["progress"] == 0  # not wedged on the failed job
    assert _pixels(_works(client)) == _pixels(expected)


@pytest.mark.parametrize("failures", [1, 2])
def test_out_of_memory_on_a_gpu_retries_once_in_the_next_memory_mode(
    client: TestClient, failures: int
) -> None:
    """On CUDA an out-of-memory job runs again in the next memory mode (here the engine's step down is
    recorded instead of performed: this machine has no GPU, where the modes do not apply)."""
    expected = _works(client)
    engine = client.services.generation.engine()  # type: ignore[attr-defined]
    real_generate = engine.generate
    steps: list[tuple[str, str]] = []
    calls: list[int] = []

    def lower_memory_mode() -> tuple[str, str] | None:
        modes = ("normal", "medvram", "lowvram")
        if len(steps) == 2:
            return None
        steps.append((modes[len(steps)], modes[len(steps) + 1]))
        return steps[-1]

    def generate(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise _cuda_out_of_memory()
        return real_generate(*args, **kwargs)

    engine.generate, engine.lower_memory_mode = generate, lower_memory_mode
    response = _txt2img(client)
    assert steps == [("normal", "medvram")]  # one step down, one retry
    if failures == 1:
        assert response.status_code == 200, response.text
        assert _pixels(response.json()) == _pixels(expected)
        (warning,) = json.loads(response.json()["info"])["warnings"]
        assert "ran out of memory in normal mode" in warning and "again in medvram mode" in warning
    else:
        assert response.status_code >= 400
        detail = response.json()["detail"]
        assert "in normal mode and again in medvram mode" in detail and "batch size" in detail, detail
    engine.generate = real_generate
    assert _pixels(_works(client)) == _pixels(expected)  # and the app goes on


def test_the_automatic_memory_mode_chooses_per_job_and_says_so(client: TestClient) -> None:
    """--memory-mode auto (the default; on a GPU only, so here the free memory is given): each job's mode is
    the fastest whose estimate fits, and a job whose mode differs from the last one's says which and why."""
    from webui.domain.memory_plan import GIB

    expected = _works(client)
    engine = client.services.generation.engine()  # type: ignore[attr-defined]
    assert not engine.auto  # the CPU has no memory modes
    engine.auto = True
    need = engine.plan_memory(engine.cache.active, _shape(64), 0).need
    free = [need.medvram]  # enough for one part at a time, not for the whole model
    engine.free_memory = lambda: free[0]

    def warnings(**fields: object) -> list[str]:
        return json.loads(_works(client, **fields)["info"])["warnings"]

    first = _works(client)
    assert _pixels(first) == _pixels(expected)  # on the CPU a mode moves nothing
    (line,) = json.loads(first["info"])["warnings"]
    assert line.startswith("Memory mode medvram: 64×64, batch 1 needs about") and "is free" in line
    assert engine.choice.memory_mode == "medvram"
    assert warnings() == []  # the same mode again: nothing to say
    free[0] = 64 * GIB
    (line,) = warnings()
    assert line.startswith("Memory mode normal:")
    free[0] = need.medvram
    assert warnings()[0].startswith("Memory mode medvram:")
    (line,) = warnings(enable_hr=True, hr_scale=4, hr_second_pass_steps=1)  # a 256² hires pass needs more
    assert line.startswith("Memory mode lowvram: 256×256")


def test_cached_controlnets_and_encoders_make_room_only_when_the_job_needs_it(client: TestClient) -> None:
    """What stays on the GPU between jobs (cached ControlNets, the IP-Adapter image encoder) is not counted
    as free; it is released when it stands between the job and a faster memory mode, and kept otherwise."""
    from webui.domain.memory_plan import GIB

    _works(client)
    engine = client.services.generation.engine()  # type: ignore[attr-defined]
    assert len(engine._releasables) == 1  # the ControlNet service's image encoder
    released: list[int] = []
    engine.add_releasable(lambda: 0 if released else 2 * GIB, lambda: released.append(1))
    engine.auto = True
    need = engine.plan_memory(engine.cache.active, _shape(64), 0).need
    engine.free_memory = lambda: need.normal + 3 * GIB  # room for the whole model beside the 2 GiB
    assert json.loads(_works(client)["info"])["warnings"] == []
    assert released == [] and engine.choice.memory_mode == "normal"
    engine.free_memory = lambda: need.normal + GIB  # the whole model fits only without them
    assert json.loads(_works(client)["info"])["warnings"] == []  # still normal: nothing to say
    assert released == [1] and engine.choice.memory_mode == "normal"


def _shape(size: int) -> object:
    from webui.domain.memory_plan import JobShape

    return JobShape("", size, size)


def test_without_a_gpu_there_is_no_lower_memory_mode(client: TestClient) -> None:
    engine = client.services.generation.engine()  # type: ignore[attr-defined]
    assert engine.choice.device.type == "cpu"
    assert engine.lower_memory_mode() is None


# --------------------------------------------------------------------------------------------- model files


def _listed(client: TestClient) -> dict[str, dict]:
    return {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json()}


def test_a_deleted_checkpoint_fails_its_job_clearly_and_refresh_drops_it(client: TestClient) -> None:
    path = client.services.settings.checkpoint_dir / FILE  # type: ignore[attr-defined]
    assert "tiny-sd15" in _listed(client)
    path.unlink()

    response = _txt2img(client)
    assert response.status_code >= 400
    detail = response.json()["detail"]
    assert FILE in detail and "no longer exists" in detail and "refresh" in detail, detail

    _works(client, FOLDER)  # the server keeps serving other models
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert "tiny-sd15" not in _listed(client) and FOLDER in _listed(client)
    response = _txt2img(client)
    assert response.status_code == 404 and "not found" in response.json()["detail"]


def test_a_checkpoint_deleted_after_loading_but_before_hashing_fails_clearly(client: TestClient) -> None:
    services = client.services  # type: ignore[attr-defined]
    record = services.models.find(FILE)
    services.generation.load_model(FILE)  # loaded; its hash is computed by the first job that needs it
    record.sha256 = None
    services.models.hashes.get = lambda *args: None  # nothing cached either
    (services.settings.checkpoint_dir / FILE).unlink()
    response = _txt2img(client)
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert FILE in detail and "no longer exists" in detail and "refresh" in detail, detail
    _works(client, FOLDER)


def test_a_truncated_checkpoint_fails_its_job_clearly_and_the_redownload_works(client: TestClient) -> None:
    path = client.services.settings.checkpoint_dir / FILE  # type: ignore[attr-defined]
    good = path.read_bytes()
    with path.open("r+b") as handle:  # an interrupted download or copy
        handle.truncate(len(good) // 2)

    response = _txt2img(client)
    assert response.status_code >= 400
    detail = response.json()["detail"]
    assert FILE in detail and ("truncated" in detail or "incomplete" in detail), detail
    assert "download" in detail, detail

    _works(client, FOLDER)
    path.write_bytes(good)  # downloaded again
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    _works(client)


@pytest.mark.parametrize("copy", ["new-times", "kept-times"])
def test_a_checkpoint_replaced_after_loading_is_reloaded_and_rehashed_on_refresh(
    client: TestClient, copy: str
) -> None:
    """Another SD 1.5 (other weights) under the same name: downloaded anew (a new mtime, the same size), or
    copied keeping the old file's times (``cp -p``, ``rsync -t``; here in fp16, so the size differs: like
    rsync's quick check, a file with the same size and mtime is taken to be unchanged)."""
    path = client.services.settings.checkpoint_dir / FILE  # type: ignore[attr-defined]
    before = _works(client)
    old_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"Model hash: {old_hash[:10]}" in json.loads(before["info"])["infotexts"][0]

    stat = path.stat()
    other = _other_sd15(path.parent.parent / "other.safetensors", half=copy == "kept-times")
    os.replace(other, path)
    if copy == "kept-times":
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.stat().st_size != stat.st_size
    else:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
        assert path.stat().st_size == stat.st_size
    new_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    assert new_hash != old_hash

    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    listed = _listed(client)["tiny-sd15"]
    assert listed["sha256"] in (None, new_hash)  # hashed again (now or in the background), never the old one
    after = _works(client)
    assert f"Model hash: {new_hash[:10]}" in json.loads(after["info"])["infotexts"][0]
    assert _pixels(after) != _pixels(before)  # the new weights, not the model loaded before
    assert _listed(client)["tiny-sd15"]["sha256"] == new_hash


def _other_sd15(path: Path, *, half: bool) -> Path:
    import torch

    from tests.fixtures.tiny_models import tiny_sd15_components
    from webui.runtime.ldm_layout import diffusers_to_ldm_state_dict, save_single_file

    torch.manual_seed(1919)
    components = tiny_sd15_components()
    with torch.no_grad():
        for parameter in components["unet"].parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    state = diffusers_to_ldm_state_dict(
        unet=components["unet"], vae=components["vae"], text_encoder=components["text_encoder"], family="sd1"
    )
    return save_single_file(path, state, dtype=torch.float16 if half else None)


def test_fixture_copy_is_not_shared(client: TestClient, tiny_model_files: dict[str, Path]) -> None:
    """The damage above never reaches the session's shared tiny model."""
    path = client.services.settings.checkpoint_dir / FILE  # type: ignore[attr-defined]
    assert not os.path.samefile(path, tiny_model_files["sd15_single"])
