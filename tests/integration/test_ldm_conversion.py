"""Proof that the fixture converter writes the real A1111 single-file layout.

A tiny seeded pipeline is converted, saved as one ``.safetensors`` file and loaded back by diffusers' own
single-file loader (which knows the original LDM layout); every tensor must come back bit-identical.
The config folder given to the loader holds configs and tokenizers only, so every weight it returns came
from the single file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from tests.fixtures.tiny_models import tiny_sd15_components, tiny_sdxl_components  # noqa: E402
from webui.runtime.ldm_layout import diffusers_to_ldm_state_dict, save_single_file  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _config_only_folder(pipeline: Any, folder: Path) -> Path:
    pipeline.save_pretrained(folder)
    for path in list(folder.rglob("*")):
        if path.suffix in (".safetensors", ".bin"):
            path.unlink()
    assert not any(p.suffix in (".safetensors", ".bin") for p in folder.rglob("*"))
    return folder


def _assert_identical(original: Any, loaded: Any, name: str) -> None:
    expected = original.state_dict()
    actual = loaded.state_dict()
    assert set(actual) == set(expected), f"{name}: keys differ: {sorted(set(actual) ^ set(expected))[:5]}"
    meta = [key for key, value in actual.items() if value.is_meta]
    assert not meta, f"{name}: not loaded from the file: {meta[:5]}"
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not different, f"{name}: tensors differ: {different[:5]}"


def test_sd15_round_trip(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    components = tiny_sd15_components()
    pipeline = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    config = _config_only_folder(pipeline, tmp_path / "config")
    state = diffusers_to_ldm_state_dict(
        components["unet"], components["vae"], components["text_encoder"], family="sd1"
    )
    assert "model.diffusion_model.input_blocks.0.0.weight" in state
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in state
    path = save_single_file(tmp_path / "tiny-sd15.safetensors", state)

    loaded = StableDiffusionPipeline.from_single_file(
        os.fspath(path),
        config=os.fspath(config),
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for name in ("unet", "vae", "text_encoder"):
        _assert_identical(components[name], getattr(loaded, name), name)


def test_sdxl_round_trip(tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    components = tiny_sdxl_components()
    pipeline = StableDiffusionXLPipeline(**components)
    config = _config_only_folder(pipeline, tmp_path / "config")
    state = diffusers_to_ldm_state_dict(
        components["unet"],
        components["vae"],
        components["text_encoder"],
        components["text_encoder_2"],
        family="sdxl",
    )
    assert state["conditioner.embedders.1.model.text_projection"].shape == (128, 128)
    assert "model.diffusion_model.label_emb.0.0.weight" in state
    path = save_single_file(tmp_path / "tiny-sdxl.safetensors", state)

    loaded = StableDiffusionXLPipeline.from_single_file(
        os.fspath(path), config=os.fspath(config), local_files_only=True
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _assert_identical(components[name], getattr(loaded, name), name)


def test_fp16_file_keeps_layout(tmp_path: Path) -> None:
    components = tiny_sd15_components()
    state = diffusers_to_ldm_state_dict(components["unet"], components["vae"], family="sd1")
    path = save_single_file(tmp_path / "half.safetensors", state, dtype=torch.float16)
    from safetensors.torch import load_file

    loaded = load_file(path)
    assert loaded.keys() == state.keys()
    assert all(tensor.dtype == torch.float16 for tensor in loaded.values())


def test_unplaced_tensors_are_reported() -> None:
    from webui.runtime.ldm_layout import ConversionError, convert_unet

    components = tiny_sd15_components()
    unet = components["unet"]
    unet.register_parameter("stray", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(ConversionError, match="stray"):
        convert_unet(unet)
