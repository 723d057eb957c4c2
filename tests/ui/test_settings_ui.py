"""The Settings tab, checkpoint defaults in the page and the honest checkpoint list: handlers of the built UI
called directly on real services (fake engine), the API checked over HTTP on the same services."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.ui.helpers import event_fn
from tests.ui.test_ui_app import BROKEN_NAME, FakeEngine
from webui.container import build_services
from webui.domain.model_defaults import SIDECAR_KEY
from webui.services.option_groups import NOT_SHOWN, OPTION_TABLE, groups
from webui.services.options import Options
from webui.settings import Settings

gr = pytest.importorskip("gradio")
pytest.importorskip("httpx")


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from webui.server import build_app
    from webui.ui.app import build_ui

    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "tiny.ckpt").write_bytes(b"not really a checkpoint" * 64)
    (ckpt_dir / "small.ckpt").write_bytes(b"another tiny checkpoint" * 64)
    (ckpt_dir / "small.json").write_text(
        json.dumps({"notes": "keep", SIDECAR_KEY: {"width": 64, "height": 96, "steps": 9, "clip_skip": 2}})
    )
    settings = Settings(data_dir=tmp_path, preload_model=False, api=True, nowebui=True)
    services = build_services(settings, engine_factory=FakeEngine)
    blocks = build_ui(services)
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values() if getattr(b, "elem_id", None)}
    with TestClient(build_app(services)) as http:
        yield SimpleNamespace(services=services, blocks=blocks, by_id=by_id, http=http)
    services.generation.shutdown()


def _by_elem_id(updates: dict[Any, Any]) -> dict[str, Any]:
    out = {}
    for component, value in updates.items():
        elem_id = getattr(component, "elem_id", None)
        if elem_id:
            out[elem_id] = value.get("value", value) if isinstance(value, dict) else value
    return out


def _visible(update: Any) -> Any:
    return update.get("visible") if isinstance(update, dict) else None


def _apply(ui: Any, **changes: Any) -> dict[str, Any]:
    """Press Apply with the tab's current values, ``changes`` typed into the widgets (by option key)."""
    apply = event_fn(ui.blocks, "settings_submit", "click")
    snapshot = _snapshot(ui)
    values = []
    for component in apply.inputs[1:]:
        key = component.elem_id.removeprefix("settings_")
        values.append(changes.get(key, snapshot[key]))
    return dict(apply.fn(snapshot, *values))


def _snapshot(ui: Any) -> dict[str, Any]:
    from webui.ui.settings import current_values

    return current_values(ui.services)


def _config(ui: Any) -> dict[str, Any]:
    return json.loads(ui.services.settings.config_file.read_text())


# --------------------------------------------------------------------------------------------- the table


def test_every_used_option_is_in_the_tab_with_a_label_and_a_group() -> None:
    shown = {info.key for info in OPTION_TABLE}
    assert shown | set(NOT_SHOWN) == set(Options.model_fields)
    assert not shown & set(NOT_SHOWN)
    assert all(info.label and info.group for info in OPTION_TABLE)
    names = [name for name, _ in groups()]
    for group in ("Saving images", "Stable Diffusion", "User interface", "Live previews", "ControlNet"):
        assert group in names
    kinds = {info.key: info.kind for info in OPTION_TABLE}
    assert kinds["samples_format"] == kinds["sd_model_checkpoint"] == kinds["sd_vae"] == "dropdown"
    assert kinds["randn_source"] == "dropdown"
    assert kinds["jpeg_quality"] == kinds["eta_ddim"] == "slider"
    assert kinds["samples_save"] == "checkbox"
    assert {info.key: info.bounds() for info in OPTION_TABLE if info.kind == "slider"}["jpeg_quality"] == (
        1,
        100,
    )


def test_settings_is_the_last_tab_with_a_widget_per_option(ui: Any) -> None:
    tabs = [b for b in ui.blocks.blocks.values() if isinstance(b, gr.Tab)]
    top = [t for t in tabs if t.elem_id and t.elem_id.startswith("tab_")]
    assert top[-1].elem_id == "tab_settings" and top[-1].id == "settings"
    for info in OPTION_TABLE:
        widget = ui.by_id[f"settings_{info.key}"]
        assert widget.label == info.label
    assert isinstance(ui.by_id["settings_samples_format"], gr.Dropdown)
    assert isinstance(ui.by_id["settings_jpeg_quality"], gr.Slider)
    assert ui.by_id["settings_jpeg_quality"].maximum == 100


# --------------------------------------------------------------------------------------------- apply


def test_apply_writes_config_json_and_the_api_sees_it_at_once(ui: Any) -> None:
    out = _by_elem_id(_apply(ui, jpeg_quality=80.0, samples_format="webp", send_seed=False))
    assert "Applied 3 settings" in out["settings_result"]
    assert _visible(_apply(ui)[ui.by_id["settings_error"]]) is False
    config = _config(ui)
    assert (config["jpeg_quality"], config["samples_format"], config["send_seed"]) == (80, "webp", False)
    api = ui.http.get("/sdapi/v1/options").json()
    assert (api["jpeg_quality"], api["samples_format"], api["send_seed"]) == (80, "webp", False)
    assert isinstance(api["jpeg_quality"], int)


def test_an_invalid_value_is_refused_with_its_label_and_nothing_is_written(ui: Any) -> None:
    ui.http.post("/sdapi/v1/options", json={"jpeg_quality": 90})
    before = ui.services.settings.config_file.read_bytes()
    updates = _apply(ui, jpeg_quality=70, samples_format="bmp")
    error = updates[ui.by_id["settings_error"]]
    assert _visible(error) is True
    assert "File format for images" in error["value"] and "png, jpg or webp" in error["value"]
    assert ui.services.settings.config_file.read_bytes() == before  # all-or-nothing: 70 not written either
    assert ui.http.get("/sdapi/v1/options").json()["jpeg_quality"] == 90


def test_a_vae_that_is_not_installed_is_refused(ui: Any) -> None:
    updates = _apply(ui, sd_vae="missing.safetensors")
    assert "not installed" in updates[ui.by_id["settings_error"]]["value"]
    assert ui.services.options.get().sd_vae == "Automatic"


def test_apply_writes_only_what_was_changed_in_the_tab(ui: Any) -> None:
    apply = event_fn(ui.blocks, "settings_submit", "click")
    snapshot = _snapshot(ui)  # the tab as opened
    ui.http.post("/sdapi/v1/options", json={"jpeg_quality": 42})  # then a script changes an option
    values = [snapshot[c.elem_id.removeprefix("settings_")] for c in apply.inputs[1:]]
    keys = [c.elem_id.removeprefix("settings_") for c in apply.inputs[1:]]
    values[keys.index("send_size")] = False
    out = _by_elem_id(dict(apply.fn(snapshot, *values)))
    assert (
        out["settings_result"]
        == "Applied 1 setting: Send size when sending prompt or image to another interface."
    )
    assert _config(ui)["jpeg_quality"] == 42 and _config(ui)["send_size"] is False
    assert out["settings_jpeg_quality"] == 42  # the tab shows the script's value now


def test_nothing_changed_says_so(ui: Any) -> None:
    assert "no setting was changed" in _by_elem_id(_apply(ui))["settings_result"]


def test_opening_the_tab_reads_changes_made_through_the_api(ui: Any) -> None:
    ui.http.post("/sdapi/v1/options", json={"jpeg_quality": 33, "live_previews_enable": False})
    select = event_fn(ui.blocks, "tab_settings", "select")
    out = _by_elem_id(dict(select.fn(None)))
    assert out["settings_jpeg_quality"] == 33
    assert out["settings_live_previews_enable"] is False


def test_vae_and_clip_skip_applied_in_the_tab_move_the_bar(ui: Any) -> None:
    vae_dir = ui.services.settings.vae_path
    (vae_dir / "soft.safetensors").write_bytes(b"x")
    out = _by_elem_id(_apply(ui, sd_vae="soft.safetensors", CLIP_stop_at_last_layers=2.0))
    assert out["setting_sd_vae"] == "soft.safetensors"
    assert out["setting_CLIP_stop_at_last_layers"] == 2
    assert ui.http.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2


# --------------------------------------------------------------------------------------------- reset, search


def test_reset_asks_first_then_restores_defaults_and_keeps_the_checkpoint(ui: Any) -> None:
    ui.http.post(
        "/sdapi/v1/options", json={"jpeg_quality": 12, "samples_format": "jpg", "some_extension_option": 5}
    )
    ui.services.options.update({"sd_model_checkpoint": "tiny.ckpt"})
    ask = event_fn(ui.blocks, "settings_reset", "click")
    assert ask.fn()["visible"] is True
    assert _config(ui)["jpeg_quality"] == 12  # asking changes nothing
    cancel = event_fn(ui.blocks, "settings_reset_no", "click")
    assert cancel.fn()["visible"] is False
    confirm = event_fn(ui.blocks, "settings_reset_yes", "click")
    updates = confirm.fn()
    out = _by_elem_id(updates)
    config = _config(ui)
    assert (config["jpeg_quality"], config["samples_format"]) == (95, "png")
    assert config["sd_model_checkpoint"] == "tiny.ckpt"
    assert config["some_extension_option"] == 5  # options Easel does not know are kept
    assert out["settings_jpeg_quality"] == 95
    assert _visible(updates[ui.by_id["settings_reset_confirm"]]) is False


def test_search_shows_only_matching_settings_and_their_groups(ui: Any) -> None:
    search = event_fn(ui.blocks, "settings_search", "change")
    updates = search.fn("jpeg")
    visible = {
        getattr(c, "elem_id", None) for c, u in updates.items() if isinstance(u, dict) and u.get("visible")
    }
    assert "settings_jpeg_quality" in visible
    assert "settings_group_saving_images" in visible
    assert "settings_samples_save" not in visible
    assert "settings_group_controlnet" not in visible
    by_key = search.fn("control_net_no_detectmap")
    assert _visible(by_key[ui.by_id["settings_control_net_no_detectmap"]]) is True
    everything = search.fn("")
    assert all(_visible(u) for u in everything.values())


# --------------------------------------------------------------------------------------------- model defaults


def test_choosing_a_checkpoint_applies_its_defaults_to_both_tabs(ui: Any) -> None:
    from webui.ui.model_defaults import model_default_values

    small = ui.services.models.find("small.ckpt").title
    assert model_default_values(ui.services, small)["height"] == 96
    pick = next(fn for fn in ui.blocks.fns.values() if getattr(fn.fn, "__name__", "") == "on_pick")
    out = _by_elem_id(pick.fn(small))
    assert (out["txt2img_width"], out["txt2img_height"], out["txt2img_steps"]) == (64, 96, 9)
    assert (out["img2img_width"], out["img2img_height"], out["img2img_steps"]) == (64, 96, 9)
    assert out["txt2img_sampler"] == "DPM++ 2M" and out["txt2img_cfg_scale"] == 7.0
    assert out["setting_CLIP_stop_at_last_layers"] == 2
    ui.services.options.update({"easel_apply_model_defaults": False})
    assert pick.fn(small) == {}


def test_page_load_shows_the_selected_checkpoints_defaults(ui: Any) -> None:
    from webui.ui.model_defaults import page_load_values

    ui.services.options.update({"sd_model_checkpoint": "small.ckpt"})
    assert page_load_values(ui.services) == {
        "width": 64,
        "height": 96,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Automatic",
        "steps": 9,
        "cfg_scale": 7.0,
    }
    ui.services.options.update({"easel_apply_model_defaults": False})
    assert page_load_values(ui.services) == {}


def test_save_as_defaults_merges_the_txt2img_values_into_the_sidecar(ui: Any) -> None:
    save = event_fn(ui.blocks, "settings_save_defaults", "click")
    small = ui.services.models.find("small.ckpt").title
    # bar checkpoint, width, height, sampler, schedule, steps, cfg, clip skip, vae
    out = _by_elem_id(save.fn(small, 128, 192, "DPM++ 2M", "Karras", 12, 5.5, 1, "Automatic"))
    assert "Saved as the defaults" in out["settings_result"]
    data = json.loads((ui.services.settings.checkpoint_dir / "small.json").read_text())
    assert data["notes"] == "keep"
    assert data[SIDECAR_KEY] == {
        "width": 128,
        "height": 192,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "steps": 12,
        "cfg_scale": 5.5,
        "clip_skip": 1,
        "vae": "Automatic",
    }
    assert "128×192" in out["settings_model_defaults"]
    bad = save.fn(small, 100, 192, "DPM++ 2M", "Karras", 12, 5.5, 1, "Automatic")
    assert "multiple of 8" in bad[ui.by_id["settings_error"]]["value"]
    forget = event_fn(ui.blocks, "settings_forget_defaults", "click")
    forget.fn(small)
    assert json.loads((ui.services.settings.checkpoint_dir / "small.json").read_text()) == {"notes": "keep"}


# --------------------------------------------------------------------------------------------- honest state


def _poll(ui: Any) -> Any:
    return next(fn for fn in ui.blocks.fns.values() if getattr(fn.fn, "__name__", "") == "poll")


def _wait_settled(ui: Any, switcher: Any) -> None:
    deadline = time.monotonic() + 10
    while switcher.settled_key() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_checkpoint_that_fails_to_load_is_not_shown_as_selected(ui: Any) -> None:
    from webui.ui.quicksettings import CheckpointSwitcher

    services = ui.services
    (services.settings.checkpoint_dir / f"{BROKEN_NAME}.ckpt").write_bytes(b"x" * 128)
    services.models.refresh()
    poll = _poll(ui)
    followers = [None] * (len(poll.inputs) - 1)
    switcher = CheckpointSwitcher(services)
    services.generation.load_model("tiny.ckpt")
    seen = None
    first = poll.fn(seen, *followers)
    seen = first[next(c for c in first if isinstance(c, gr.State))]
    assert first[ui.by_id["setting_sd_model_checkpoint"]]["value"].startswith("tiny.ckpt")
    switcher.request(f"{BROKEN_NAME}.ckpt")
    _wait_settled(ui, switcher)
    out = poll.fn(seen, *followers)
    assert out[ui.by_id["setting_sd_model_checkpoint"]]["value"].startswith("tiny.ckpt")
    status = out[ui.by_id["sd_model_status"]]
    assert "not a Stable Diffusion checkpoint" in status and "Still using tiny.ckpt" in status
    again = poll.fn(out[next(c for c in out if isinstance(c, gr.State))], *followers)
    assert ui.by_id["setting_sd_model_checkpoint"] not in again  # settled: the list is left alone


def test_with_nothing_loaded_a_failed_checkpoint_leaves_the_list_empty(ui: Any) -> None:
    from webui.ui.quicksettings import CheckpointSwitcher, shown_checkpoint

    services = ui.services
    (services.settings.checkpoint_dir / f"{BROKEN_NAME}.ckpt").write_bytes(b"x" * 128)
    services.models.refresh()
    switcher = CheckpointSwitcher(services)
    switcher.request(f"{BROKEN_NAME}.ckpt")
    _wait_settled(ui, switcher)
    assert shown_checkpoint(services) is None
    assert "not a Stable Diffusion checkpoint" in switcher.status()
