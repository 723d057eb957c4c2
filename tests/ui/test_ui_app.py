"""The Gradio UI built on real services with a fake engine, driven through ``gradio_client``."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from tests.ui.helpers import event_fn
from webui.container import Services, build_services
from webui.domain.generation import Txt2ImgRequest
from webui.domain.models import ModelFamily
from webui.metadata.image_io import encode_image, read_infotext
from webui.settings import Settings
from webui.ui.pnginfo import fields_to_send, read_image_info
from webui.ui.quicksettings import CheckpointSwitcher, _notice_update
from webui.ui.txt2img import format_progress
from webui.ui.user_errors import user_message

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

STEP_SECONDS = 0.03
BROKEN_NAME = "broken"


class FakeEngine:
    """What GenerationService needs from an engine: solid-colour images, one callback per step."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.activations: list[str] = []

    def activate(self, record: Any, vae_path: Any = None, vae_hash: Any = None, progress: Any = None) -> Any:
        if BROKEN_NAME in record.name:
            raise RuntimeError("the file is not a Stable Diffusion checkpoint")
        if progress is not None:
            progress(f"Loading {record.name}", 0.5)
        self.activations.append(record.name)
        return SimpleNamespace(family=ModelFamily.SD1, vae_name=None, vae_hash=None)

    def generate(self, model: Any, job: Any, on_step: Any) -> tuple[list[Image.Image], bool]:
        for step in range(1, job.steps + 1):
            time.sleep(STEP_SECONDS)
            if not on_step(step, job.steps, None):
                break
        images = [Image.new("RGB", (job.width, job.height), (seed % 256, 80, 160)) for seed in job.seeds]
        return images, False

    def preview(self, latents: Any, family: Any) -> Image.Image:
        return Image.new("RGB", (32, 32), (200, 200, 200))


def _make_services(data_dir: Path, *, with_checkpoint: bool = True) -> Services:
    ckpt_dir = data_dir / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if with_checkpoint:
        (ckpt_dir / "tiny.ckpt").write_bytes(b"not really a checkpoint" * 64)
    settings = Settings(data_dir=data_dir, preload_model=False)
    return build_services(settings, engine_factory=FakeEngine)


def _require_seed_resolution() -> None:
    try:
        from webui.runtime.noise import resolve_seed  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"webui.runtime.noise.resolve_seed is not available yet ({exc}); generation cannot run")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    _require_seed_resolution()
    from webui.ui.app import build_ui, launch_kwargs

    services = _make_services(tmp_path_factory.mktemp("easel-ui"))
    blocks = build_ui(services)
    _app, url, _share = blocks.launch(
        prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", **launch_kwargs()
    )
    client = gradio_client.Client(url, verbose=False)
    try:
        yield SimpleNamespace(services=services, blocks=blocks, client=client, url=url)
    finally:
        client.close()
        blocks.close()
        services.generation.shutdown()


def _txt2img(client: Any, **fields: Any) -> dict[str, Any]:
    values = {"prompt": "a red fox", "steps": 4, "width": 64, "height": 64, "seed": 1234, **fields}
    preview, progress, gallery, infotext, error = client.predict(**values, api_name="/txt2img")
    return {
        "preview": preview,
        "progress": progress,
        "gallery": gallery,
        "infotext": infotext,
        "error": error,
    }


def _error_text(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("value")
    return value or ""


# ------------------------------------------------------------------------------------------- building


def test_build_ui_has_the_stable_element_ids(tmp_path: Path) -> None:
    from webui.ui.app import build_ui

    services = _make_services(tmp_path)
    try:
        blocks = build_ui(services)
        assert isinstance(blocks, gr.Blocks)
        assert blocks.title == "Easel"
        ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
        expected = {
            "txt2img_prompt",
            "txt2img_neg_prompt",
            "txt2img_generate",
            "txt2img_interrupt",
            "txt2img_skip",
            "txt2img_gallery",
            "txt2img_infotext",
            "txt2img_progress",
            "txt2img_preview",
            "txt2img_error",
            "txt2img_seed",
            "txt2img_steps",
            "txt2img_sampler",
            "txt2img_scheduler",
            "txt2img_width",
            "txt2img_height",
            "setting_sd_model_checkpoint",
            "pnginfo_image",
            "pnginfo_info",
            "pnginfo_send_txt2img",
        }
        assert expected <= ids, expected - ids
    finally:
        services.generation.shutdown()


def test_without_checkpoint_the_page_says_where_to_put_one(tmp_path: Path) -> None:
    from webui.ui.app import build_ui

    services = _make_services(tmp_path, with_checkpoint=False)
    try:
        blocks = build_ui(services)
        notices = [
            block for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "no_model_notice"
        ]
        assert len(notices) == 1
        assert notices[0].visible
        assert str(services.settings.checkpoint_dir) in notices[0].value
    finally:
        services.generation.shutdown()


# ------------------------------------------------------------------------------------------- pure helpers


def test_validation_errors_become_sentences() -> None:
    with pytest.raises(ValidationError) as info:
        Txt2ImgRequest(width=100, steps=0)
    message = user_message(info.value)
    assert "Width must be a multiple of 8" in message
    assert "Sampling steps should be greater than or equal to 1." in message
    assert "Value error" not in message and "pydantic" not in message


def test_progress_line_shows_step_batch_and_eta() -> None:
    text = format_progress(
        {
            "progress": 0.25,
            "eta_relative": 75.0,
            "state": {"sampling_step": 5, "sampling_steps": 20, "job_no": 0, "job_count": 2},
            "textinfo": "Batch 1 of 2",
            "busy": True,
        }
    )
    assert text == "Step 5/20 · Batch 1/2 · 25% · ETA 1m 15s"
    assert format_progress({"busy": False, "state": {}}) == "Starting…"


def test_fields_to_send_use_the_shared_infotext_mapping() -> None:
    infotext = (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 12, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 42, Size: 640x448, Clip skip: 2"
    )
    available = {"prompt", "negative_prompt", "steps", "sampler_name", "scheduler", "cfg_scale", "seed"}
    available |= {"width", "height", "clip_skip"}
    options = SimpleNamespace(send_seed=True, send_size=True)
    fields = fields_to_send(infotext, options, available)
    assert fields == {
        "prompt": "a cat",
        "negative_prompt": "blurry",
        "steps": 12,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "cfg_scale": 5.5,
        "seed": 42,
        "width": 640,
        "height": 448,
        "clip_skip": 2,
    }
    Txt2ImgRequest(**fields)  # what is sent is a valid request
    without = fields_to_send(infotext, SimpleNamespace(send_seed=False, send_size=False), available)
    assert "seed" not in without and "width" not in without and "height" not in without


def test_read_image_info_without_parameters(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    infotext, parsed, extra = read_image_info(str(path))
    assert infotext == "" and parsed == {}
    assert "no generation parameters" in extra


# ------------------------------------------------------------------------------------------- served app


def test_txt2img_through_the_client(served: Any) -> None:
    out = _txt2img(served.client, negative_prompt="blurry", sampler_name="Euler a", scheduler="Automatic")
    assert _error_text(out["error"]) == ""
    assert len(out["gallery"]) == 1
    image = out["gallery"][0]["image"]
    image_path = image["path"] if isinstance(image, dict) else image
    assert Path(image_path).is_file()
    assert "Steps: 4" in out["infotext"] and "Seed: 1234" in out["infotext"]
    assert "Negative prompt: blurry" in out["infotext"]
    # The gallery file keeps the parameters, so it can be dropped on PNG Info.
    embedded, _items = read_infotext(image_path)
    assert embedded == out["infotext"]
    saved = list((served.services.settings.outputs_path / "txt2img-images").rglob("*.png"))
    assert saved


def test_generation_streams_progress(served: Any) -> None:
    job = served.client.submit(prompt="progress", steps=20, width=64, height=64, seed=7, api_name="/txt2img")
    final = job.result(timeout=60)
    texts = [update[1] for update in job.outputs() if isinstance(update[1], str)]
    assert any("Step " in text for text in texts), texts
    previews = [
        update[0] for update in job.outputs() if isinstance(update[0], dict) and update[0].get("visible")
    ]
    assert previews and previews[-1].get("value"), "no live preview was shown while generating"
    assert final[3].startswith("progress")


def test_batch_gives_one_image_per_seed(served: Any) -> None:
    out = _txt2img(served.client, batch_size=2, n_iter=2, seed=100)
    assert len(out["gallery"]) == 4
    assert [item["caption"] for item in out["gallery"]] == ["Seed 100", "Seed 101", "Seed 102", "Seed 103"]


def test_bad_size_is_an_error_message_and_the_app_keeps_working(served: Any) -> None:
    out = _txt2img(served.client, width=100)
    message = _error_text(out["error"])
    assert "Width must be a multiple of 8" in message
    out = _txt2img(served.client, width=96)
    assert _error_text(out["error"]) == ""
    assert "Size: 96x64" in out["infotext"]


def test_unknown_sampler_is_reported(served: Any) -> None:
    out = _txt2img(served.client, sampler_name="Not A Sampler")
    assert "unknown sampler" in _error_text(out["error"]).lower()
    assert _error_text(_txt2img(served.client)["error"]) == ""


def test_no_checkpoint_is_reported_then_recovers(served: Any) -> None:
    models = served.services.models
    ckpt = models.settings.checkpoint_dir / "tiny.ckpt"
    hidden = ckpt.with_name("tiny.hidden")
    ckpt.rename(hidden)
    try:
        models.refresh()
        out = _txt2img(served.client)
        assert "No checkpoint found" in _error_text(out["error"])
        notice = _notice_update(served.services)  # one line under the checkpoint list says what to do
        assert notice["visible"] and "models/Stable-diffusion" in notice["value"].replace("\\", "/")
    finally:
        hidden.rename(ckpt)
        models.refresh()
    assert _error_text(_txt2img(served.client)["error"]) == ""


def test_the_status_line_leaves_a_missing_checkpoint_to_the_notice_and_names_a_loaded_one_once() -> None:
    from webui.services.models import LoadState

    state = LoadState()
    files: list[str] = []
    services = SimpleNamespace(
        models=SimpleNamespace(load_state=state, checkpoints=lambda: files),
        generation=SimpleNamespace(cluster_factory=None),
    )
    switcher = CheckpointSwitcher(services)
    assert switcher.status() == ""  # nothing installed: the notice under it says where to put one
    files.append("a.safetensors")
    assert switcher.status().startswith("No checkpoint loaded yet")
    state.loaded_name = "a.safetensors [0123456789]"
    state.set("Loaded a.safetensors", 1.0)
    assert switcher.status() == "Loaded a.safetensors [0123456789]"


def test_pnginfo_reads_parameters(served: Any, tmp_path: Path) -> None:
    infotext = "a house\nNegative prompt: fog\nSteps: 9, Sampler: Euler, CFG scale: 6, Seed: 5, Size: 64x64"
    path = tmp_path / "with-params.png"
    path.write_bytes(encode_image(Image.new("RGB", (64, 64)), infotext, "png"))
    info, params, _extra = served.client.predict(gradio_client.handle_file(str(path)), api_name="/pnginfo")
    assert info == infotext
    assert params["Steps"] == "9" and params["Prompt"] == "a house" and params["Negative prompt"] == "fog"


def test_interrupt_stops_a_running_generation(served: Any) -> None:
    job = served.client.submit(prompt="long", steps=150, width=64, height=64, seed=3, api_name="/txt2img")
    deadline = time.monotonic() + 10
    while not served.services.generation.progress.busy and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    started = time.monotonic()
    served.client.predict(api_name="/interrupt")
    final = job.result(timeout=30)
    assert time.monotonic() - started < 150 * STEP_SECONDS
    assert final[1].startswith("Interrupted"), final[1]
    assert _error_text(_txt2img(served.client)["error"]) == ""


def test_interrupt_and_skip_endpoints_are_safe_when_idle(served: Any) -> None:
    served.client.predict(api_name="/interrupt")
    served.client.predict(api_name="/skip")
    assert _error_text(_txt2img(served.client)["error"]) == ""


def test_checkpoint_switch_reports_errors_in_the_status_line(served: Any) -> None:

    services = served.services
    broken = services.settings.checkpoint_dir / f"{BROKEN_NAME}.ckpt"
    broken.write_bytes(b"x" * 128)
    try:
        services.models.refresh()
        switcher = CheckpointSwitcher(services)
        switcher.request(f"{BROKEN_NAME}.ckpt")
        deadline = time.monotonic() + 10
        while switcher.status().startswith(("Loading", "Queued")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "not a Stable Diffusion checkpoint" in switcher.status()
        switcher.request("tiny.ckpt")
        deadline = time.monotonic() + 10
        while switcher.status().startswith(("Loading", "Queued")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not switcher.status().startswith(("Error", "Loading", "Queued")), switcher.status()
        assert switcher.status().startswith("Loaded tiny.ckpt") and switcher.status().count("tiny.ckpt") == 1
        assert services.options.get().sd_model_checkpoint.startswith("tiny.ckpt")
    finally:
        broken.unlink()
        services.models.refresh()
    assert _error_text(_txt2img(served.client)["error"]) == ""


def test_send_to_txt2img_fills_the_fields_and_switches_tab(served: Any) -> None:
    blocks = served.blocks
    by_id = {getattr(block, "elem_id", None): block for block in blocks.blocks.values()}
    send = event_fn(blocks, "pnginfo_send_txt2img", "click")
    infotext = (
        "a lighthouse\nNegative prompt: people\n"
        "Steps: 11, Sampler: Euler a, Schedule type: Uniform, CFG scale: 4.5, Seed: 77, "
        "Size: 320x256, Clip skip: 2"
    )
    updates = send.fn(infotext)
    values = {getattr(component, "elem_id", None): value for component, value in updates.items()}
    assert values["txt2img_prompt"] == "a lighthouse"
    assert values["txt2img_neg_prompt"] == "people"
    assert values["txt2img_steps"] == 11
    assert values["txt2img_sampler"] == "Euler a"
    assert values["txt2img_scheduler"] == "Uniform"
    assert values["txt2img_cfg_scale"] == 4.5
    assert values["txt2img_seed"] == 77
    assert (values["txt2img_width"], values["txt2img_height"]) == (320, 256)
    assert values["setting_CLIP_stop_at_last_layers"] == 2
    tabs = by_id["tabs"]
    assert updates[tabs].selected == "txt2img"


def test_ui_mounts_on_the_server(tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    try:
        from webui.server import build_app
    except ImportError as exc:  # the server module belongs to the app wiring, not the UI
        pytest.skip(f"webui.server is not importable: {exc}")
    services = _make_services(tmp_path)
    try:
        with TestClient(build_app(services)) as http:
            page = http.get("/")
            assert page.status_code == 200
            assert "Easel" in page.text
    finally:
        services.generation.shutdown()
