"""The key → shape maps of real published checkpoints, and header-only files built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from tests.fixtures.real_layouts import FAMILIES, real_shapes, write_header_only
from webui.registry.safetensors_header import SafetensorsError, read_header


def test_sd15_shapes() -> None:
    shapes = real_shapes("sd1")
    assert shapes["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (
        320,
        768,
    )
    assert shapes["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert shapes["model.diffusion_model.out.2.weight"] == (4, 320, 3, 3)
    assert shapes["model.diffusion_model.time_embed.0.weight"] == (1280, 320)
    assert shapes["model.diffusion_model.input_blocks.3.0.op.weight"] == (320, 320, 3, 3)
    assert shapes["model.diffusion_model.output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["model.diffusion_model.output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["model.diffusion_model.middle_block.1.proj_in.weight"] == (1280, 1280, 1, 1)
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert shapes["first_stage_model.decoder.up.3.block.0.conv1.weight"] == (512, 512, 3, 3)
    assert shapes["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert shapes["first_stage_model.quant_conv.weight"] == (8, 8, 1, 1)
    assert len(shapes) == 1131  # as in v1-5-pruned-emaonly, without the DDPM schedule buffers


def test_inpainting_and_sd2_shapes() -> None:
    assert real_shapes("sd1-inpaint")["model.diffusion_model.input_blocks.0.0.weight"] == (320, 9, 3, 3)
    sd2 = real_shapes("sd2")
    assert sd2["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320)  # linear projection
    assert sd2["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)
    assert sd2["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert sd2["cond_stage_model.model.positional_embedding"] == (77, 1024)
    assert sd2["cond_stage_model.model.text_projection"] == (1024, 1024)
    assert real_shapes("sd2-v") == sd2  # v-prediction is not visible in the shapes


def test_sdxl_shapes() -> None:
    shapes = real_shapes("sdxl")
    assert shapes["conditioner.embedders.1.model.text_projection"] == (1280, 1280)
    assert shapes["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)
    assert shapes["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] == (
        49408,
        768,
    )
    assert shapes["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"] == (
        3840,
        1280,
    )
    assert shapes["model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight"] == (
        1280,
        2048,
    )
    assert len(shapes) == 2515  # as in sd_xl_base_1.0.safetensors

    refiner = real_shapes("sdxl-refiner")
    assert refiner["model.diffusion_model.label_emb.0.0.weight"] == (1536, 2560)
    assert refiner["conditioner.embedders.0.model.text_projection"] == (1280, 1280)
    assert not any(key.startswith("conditioner.embedders.1.") for key in refiner)


@pytest.mark.parametrize("family", FAMILIES)
def test_header_only_file_round_trips(tmp_path: Path, family: str) -> None:
    shapes = real_shapes(family)
    path = write_header_only(tmp_path / f"{family}.safetensors", shapes)
    assert path.stat().st_size < 1024 * 1024  # header only, no multi-GB data
    header = read_header(path, check_size=False)
    assert {key: info.shape for key, info in header.tensors.items()} == shapes
    assert header.tensors["model.diffusion_model.input_blocks.0.0.weight"].dtype == "F16"
    with pytest.raises(SafetensorsError, match="truncated"):
        read_header(path)


def test_small_header_file_is_complete(tmp_path: Path) -> None:
    path = write_header_only(tmp_path / "small.safetensors", {"a": (2, 3), "b": (4,)}, metadata={"k": "v"})
    header = read_header(path)
    assert header.metadata == {"k": "v"}
    assert header.tensors["a"].shape == (2, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_real_layouts_are_identified(family: str) -> None:
    architecture = pytest.importorskip("webui.registry.architecture")
    expected = "sd2" if family == "sd2-v" else family  # SD2-v differs from SD2 only outside the weights
    assert architecture.detect_family(real_shapes(family)).value == expected
