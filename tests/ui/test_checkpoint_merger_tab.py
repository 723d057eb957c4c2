"""The bundled Checkpoint Merger extension: its tab through the real extension host (no browser)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.ui.helpers import event_fn
from webui.extensions.api import Extension, Manifest

FOLDER = Path(__file__).resolve().parents[2] / "extensions" / "checkpoint-merger"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("easel_test_checkpoint_merger", FOLDER / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def host(data_dir: Path, tiny_model_files: dict[str, Path]) -> Iterator[Any]:
    from webui.container import build_services
    from webui.settings import Settings

    folder = data_dir / "models" / "Stable-diffusion"
    state = load_file(str(folder / "tiny-sd15.safetensors"))
    save_file(
        {k: v * 2 if v.is_floating_point() else v for k, v in state.items()}, str(folder / "b.safetensors")
    )
    (folder / "tiny-sdxl.safetensors").write_bytes(tiny_model_files["sdxl_single"].read_bytes())
    (data_dir / "models" / "VAE").mkdir(parents=True, exist_ok=True)
    services = build_services(Settings(data_dir=data_dir, preload_model=False))
    yield services.extension_host
    services.generation.shutdown()


def _titles(host: Any) -> dict[str, str]:
    return {info.name: info.title for info in host.checkpoints()}


def test_setup_registers_the_tab_and_lists_only_safetensors_files(host: Any) -> None:
    module = _load()
    manifest = Manifest("checkpoint-merger", "Checkpoint Merger", "1.0.0", "", "main:setup", 1)
    ext = Extension(manifest, FOLDER, FOLDER, host)
    module.setup(ext)
    assert [title for title, _build in ext.tabs] == ["Checkpoint Merger"]
    assert not ext.scripts and not ext.process_hooks  # a tab, nothing in the generation path
    names = [title.split(" [")[0] for title in module.checkpoint_choices(host)]
    assert names == ["b.safetensors", "tiny-sd15.safetensors", "tiny-sdxl.safetensors"]  # no diffusers folder


def test_merge_saves_a_listed_checkpoint_and_reports_refusals(host: Any) -> None:
    module = _load()
    titles = _titles(host)
    a, b = titles["tiny-sd15.safetensors"], titles["b.safetensors"]
    seen: list[float] = []
    ok, message = module.merge(
        host, a, b, None, "Weighted sum", 0.5, "tab-merge", "fp32", "None", True,
        lambda _text, fraction: seen.append(fraction),
    )  # fmt: skip
    assert ok, message
    new_title = _titles(host)["tab-merge.safetensors"]
    assert message == f"Checkpoint saved: {new_title}. Refresh the checkpoint list at the top to select it."
    assert new_title in module.checkpoint_choices(host)
    assert seen[-1] == 1.0
    key = "model.diffusion_model.out.2.bias"
    merged = load_file(str(host.checkpoints()[0].path.parent / "tab-merge.safetensors"))[key]
    original = load_file(str(host.checkpoints()[0].path.parent / "tiny-sd15.safetensors"))[key]
    assert torch.equal(merged, 0.5 * original + 0.5 * (original * 2))

    ok, message = module.merge(host, a, b, None, "Weighted sum", 0.5, "tab-merge", "fp16", "None", True)
    assert not ok and "tab-merge.safetensors already exists" in message
    ok, message = module.merge(
        host, a, titles["tiny-sdxl.safetensors"], None, "Weighted sum", 0.3, "", "fp16", None, True
    )
    assert not ok and "different families" in message
    ok, message = module.merge(host, a, b, None, "Add difference", 0.3, "", "fp16", None, True)
    assert not ok and message == "Add difference needs a tertiary model (C)."
    ok, message = module.merge(host, None, b, None, "Weighted sum", 0.3, "", "fp16", None, True)
    assert not ok and message == "Choose the primary model (A)."


def test_the_tab_builds_and_its_merge_button_updates_the_lists(host: Any) -> None:
    import gradio as gr

    module = _load()
    with gr.Blocks() as blocks, gr.Tab(module.TAB_TITLE):
        module.build_tab(host)
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {"merger_primary", "merger_secondary", "merger_tertiary", "merger_method", "merger_multiplier",
            "merger_name", "merger_precision", "merger_vae", "merger_copy_config", "merger_merge",
            "merger_result"} <= ids  # fmt: skip
    titles = _titles(host)
    run = event_fn(blocks, "merger_merge", "click").fn
    outputs = run(
        titles["tiny-sd15.safetensors"], titles["b.safetensors"], None, "No interpolation", 0.3, "half",
        "fp16", "None", False, lambda *_args, **_kwargs: None,
    )  # fmt: skip
    assert outputs[3].startswith("Checkpoint saved: half.safetensors [")
    assert any(choice[1].startswith("half.safetensors [") for choice in outputs[0].choices)
    failed = run(None, None, None, "Weighted sum", 0.3, "", "fp16", "None", False, lambda *_a, **_k: None)
    assert failed[3] == "**Not merged:** Choose the primary model (A)."
    formula = event_fn(blocks, "merger_method", "change").fn
    assert formula("Add difference") == "Result = A + (B − C) · M"
    refresh = event_fn(blocks, "merger_refresh", "click").fn
    (host.checkpoints()[0].path.parent / "b.safetensors").unlink()
    primary, _secondary, _tertiary, _vae = refresh(titles["b.safetensors"], None, None)
    assert primary.value is None  # a model that is gone is no longer selected
    assert not any(choice[0].startswith("b.safetensors") for choice in primary.choices)
