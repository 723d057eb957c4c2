"""Family detection and config inference on real full-size key/shape sets (no weights allocated)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.real_layouts import real_shapes, write_header_only
from webui.domain.models import ModelFamily
from webui.registry.architecture import (
    UnknownArchitectureError,
    bundled_config,
    detect_family,
    family_from_yaml,
    infer_configs,
)
from webui.registry.safetensors_header import read_header

SHAPE_FAMILIES = [f for f in ModelFamily if f is not ModelFamily.SD2_V]  # v-prediction is not in the shapes

UNET_FIELDS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "cross_attention_dim",
    "use_linear_projection",
    "attention_head_dim",
    "transformer_layers_per_block",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)


@pytest.mark.parametrize("family", SHAPE_FAMILIES, ids=lambda f: f.value)
def test_real_layout_detected_and_inferred_configs_match_bundled(family: ModelFamily, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_header_only(path, real_shapes(family))
    shapes = {key: info.shape for key, info in read_header(path, check_size=False).tensors.items()}
    assert detect_family(shapes) is family
    configs = infer_configs(shapes, family)
    bundled_unet = bundled_config(family, "unet")
    for field in UNET_FIELDS:
        if field in bundled_unet:
            expected = bundled_unet[field]
            got = configs.unet[field]
            if isinstance(expected, list) and len(set(expected)) == 1 and not isinstance(got, list):
                expected = expected[0]
            assert got == expected, (family, field)
    bundled_vae = bundled_config(family, "vae")
    for field in ("block_out_channels", "latent_channels", "layers_per_block"):
        assert configs.vae[field] == bundled_vae[field]
    for name, config in (("text_encoder", configs.text_encoder), ("text_encoder_2", configs.text_encoder_2)):
        if config is None:
            continue
        bundled = bundled_config(family, name)
        for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            assert config[field] == bundled[field], (family, name, field)


def test_truncated_real_layout_is_reported(tmp_path: Path) -> None:
    from webui.registry.safetensors_header import SafetensorsError

    path = tmp_path / "model.safetensors"
    write_header_only(path, real_shapes(ModelFamily.SD1))
    with pytest.raises(SafetensorsError, match="truncated"):
        read_header(path)


def test_unknown_files_get_hints() -> None:
    with pytest.raises(UnknownArchitectureError, match="models/Lora"):
        detect_family({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)})
    with pytest.raises(UnknownArchitectureError, match="models/VAE"):
        detect_family({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)})
    with pytest.raises(UnknownArchitectureError, match="input channels"):
        detect_family({"model.diffusion_model.input_blocks.0.0.weight": (320, 7, 3, 3)})


@pytest.mark.parametrize(
    ("text", "family"),
    [
        ("cond_stage_config:\n  target: ldm.modules.encoders.modules.FrozenCLIPEmbedder\n", ModelFamily.SD1),
        (
            "unet_config:\n  params:\n    in_channels: 9\ncond_stage_config: FrozenCLIPEmbedder",
            ModelFamily.SD1_INPAINT,
        ),
        ('parameterization: "v"\ncond_stage_config: FrozenOpenCLIPEmbedder', ModelFamily.SD2_V),
        ("cond_stage_config: FrozenOpenCLIPEmbedder", ModelFamily.SD2),
        ("conditioner:\n  FrozenCLIPEmbedder\n  FrozenOpenCLIPEmbedder2", ModelFamily.SDXL),
        ("conditioner:\n  FrozenOpenCLIPEmbedder2", ModelFamily.SDXL_REFINER),
    ],
)
def test_yaml_overrides(text: str, family: ModelFamily) -> None:
    assert family_from_yaml(text) is family


def test_real_sd_x4_layout_is_recognised_and_reproduces_the_release_configs() -> None:
    """The full-size x4-upscaler-ema layout (built on the meta device from the bundled configs)."""
    from webui.registry.architecture import SD_X4, infer_sd_x4_configs, is_sd_x4_layout

    shapes = real_shapes(SD_X4)
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"] == (256, 7, 3, 3)
    assert shapes["model.diffusion_model.label_emb.weight"] == (1000, 1024)
    assert is_sd_x4_layout(shapes)
    assert not any(is_sd_x4_layout(real_shapes(family)) for family in ModelFamily)
    with pytest.raises(UnknownArchitectureError, match="x4 upscaler, not a checkpoint"):
        detect_family(shapes, name="x4-upscaler-ema.safetensors")

    configs = infer_sd_x4_configs(shapes)
    released = bundled_config(SD_X4, "unet")
    for field in (*UNET_FIELDS, "num_class_embeds"):
        if field in released:
            assert configs.unet[field] == released[field], field
    # Only levels with attention: there the flag is read from the shapes (text-only attention where the key
    # projection takes the text width). A level without attention has nothing to read; it keeps the
    # release's value, so comparing it would compare the bundled config with itself.
    attends = [i for i, kind in enumerate(released["down_block_types"]) if kind.startswith("CrossAttn")]
    assert attends == [1, 2, 3]
    inferred = [configs.unet["only_cross_attention"][i] for i in attends]
    assert inferred == [released["only_cross_attention"][i] for i in attends] == [True, True, False]
    assert configs.unet["mid_block_only_cross_attention"] is False
    for field in ("block_out_channels", "latent_channels", "layers_per_block", "scaling_factor"):
        assert configs.vae[field] == bundled_config(SD_X4, "vae")[field], field
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        assert configs.text_encoder[field] == bundled_config(SD_X4, "text_encoder")[field], field
    assert configs.scheduler["prediction_type"] == "v_prediction"
    assert (configs.low_res_scheduler["beta_start"], configs.low_res_scheduler["beta_end"]) == (0.0001, 0.02)
    assert configs.max_noise_level == 350

    with pytest.raises(UnknownArchitectureError, match="not the Stable Diffusion x4 upscaler"):
        infer_sd_x4_configs(real_shapes(ModelFamily.SD2))
