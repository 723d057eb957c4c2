"""Identify a checkpoint's family and derive its diffusers configs from tensor names and shapes.

Works on the key → shape map of a safetensors header (or a loaded state dict), so a multi-GB file is
identified from a few kilobytes. The family picks the bundled config (scheduler, prediction type, VAE
scale, attention layout); the sizes (channels, depths, attention widths) are read from the shapes, so
pruned, resized or miniature models of a known family load as well as the published ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from webui.domain.models import ModelFamily

Shapes = Mapping[str, tuple[int, ...]]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer."
SD2_TE_PREFIX = "cond_stage_model.model."
SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."
REFINER_TE2_PREFIX = "conditioner.embedders.0.model."

# The Stable Diffusion x4 upscaler is no checkpoint family (it is listed with the upscalers), but its
# single file is read the same way; its bundled configs live under this name.
SD_X4 = "sd-x4"
SD_X4_IN_CHANNELS = 7  # 4 latent channels + the 3 channels of the noised low-resolution image


class UnknownArchitectureError(ValueError):
    """The tensors do not match any family Easel can load."""


def config_root() -> Path:
    return Path(str(resources.files("webui.runtime") / "configs"))


def bundled_config(family: ModelFamily | str, component: str) -> dict[str, Any]:
    """The bundled diffusers config of a published model of ``family`` (``unet``, ``vae``, ...).

    ``family`` is a ``ModelFamily`` or the name of another bundled config folder (``SD_X4``).
    """
    folder = config_root() / str(family) / component
    name = "scheduler_config.json" if component.endswith("scheduler") else "config.json"
    data: dict[str, Any] = json.loads((folder / name).read_text())
    return data


def _has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in shapes)


def _strip(shapes: Shapes, prefix: str) -> dict[str, tuple[int, ...]]:
    return {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}


def detect_family(shapes: Shapes, *, name: str = "checkpoint") -> ModelFamily:
    """Identify the family of an LDM/A1111-layout checkpoint from its key → shape map."""
    unet = _strip(shapes, UNET_PREFIX)
    if not unet:
        hint = ""
        if any(key.startswith(("lora_", "lora_unet", "lora_te")) for key in shapes):
            hint = " It looks like a LoRA: put it in models/Lora."
        elif any(key.startswith(("control_model.", "input_hint_block", "zero_convs")) for key in shapes):
            hint = " It looks like a ControlNet: put it in models/ControlNet."
        elif _has_prefix(shapes, "encoder.") and _has_prefix(shapes, "decoder."):
            hint = " It looks like a VAE: put it in models/VAE."
        elif any(key.startswith(("down_blocks.", "conv_in.")) for key in shapes):
            hint = " It looks like a UNet in diffusers layout alone; Easel needs a full checkpoint."
        raise UnknownArchitectureError(
            f"{name}: not a Stable Diffusion checkpoint (no UNet weights found).{hint}"
        )
    conv_in = unet.get("input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise UnknownArchitectureError(f"{name}: the UNet has no input convolution; the file is incomplete")
    in_channels = conv_in[1]
    inpaint = in_channels == 9
    if is_sd_x4_layout(shapes):
        raise UnknownArchitectureError(
            f"{name}: this is the Stable Diffusion x4 upscaler, not a checkpoint; it is listed with the "
            "upscalers (Extras tab) when it is in models/ESRGAN or models/Stable-diffusion"
        )
    if in_channels not in (4, 9):
        raise UnknownArchitectureError(
            f"{name}: UNet with {in_channels} input channels is not a supported family "
            "(SD 1.x, SD 2.x or SDXL, plain or inpainting)"
        )
    if "label_emb.0.0.weight" in unet:
        if _has_prefix(shapes, SDXL_TE2_PREFIX):
            return ModelFamily.SDXL_INPAINT if inpaint else ModelFamily.SDXL
        if _has_prefix(shapes, REFINER_TE2_PREFIX):
            return ModelFamily.SDXL_REFINER
        raise UnknownArchitectureError(
            f"{name}: SDXL-style UNet without its text encoders; unsupported layout"
        )
    if _has_prefix(shapes, SD2_TE_PREFIX):
        if inpaint:
            return ModelFamily.SD2_INPAINT
        # v-prediction cannot be seen in the weights; 768-v models are told apart by their
        # upcast-attention era layout only through a yaml. Default to epsilon; a yaml overrides.
        return ModelFamily.SD2
    if _has_prefix(shapes, SD1_TE_PREFIX):
        return ModelFamily.SD1_INPAINT if inpaint else ModelFamily.SD1
    raise UnknownArchitectureError(f"{name}: UNet found but no CLIP text encoder; unsupported layout")


def family_from_yaml(text: str) -> ModelFamily | None:
    """Read the family hints of an A1111/LDM ``<name>.yaml`` beside a checkpoint."""
    inpaint = re.search(r"in_channels:\s*9\b", text) is not None
    if "conditioner" in text or "SDXL" in text or "DiffusionEngine" in text:
        if "FrozenOpenCLIPEmbedder2" in text and "FrozenCLIPEmbedder" not in text.replace(
            "FrozenOpenCLIPEmbedder2", ""
        ):
            return ModelFamily.SDXL_REFINER
        return ModelFamily.SDXL_INPAINT if inpaint else ModelFamily.SDXL
    if "FrozenOpenCLIPEmbedder" in text:
        if inpaint:
            return ModelFamily.SD2_INPAINT
        return ModelFamily.SD2_V if re.search(r"parameterization:\s*['\"]?v['\"]?", text) else ModelFamily.SD2
    if "FrozenCLIPEmbedder" in text:
        return ModelFamily.SD1_INPAINT if inpaint else ModelFamily.SD1
    return None


def detect_diffusers_family(folder: Path) -> ModelFamily:
    """Identify a diffusers folder from its ``model_index.json`` and component configs."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnknownArchitectureError(f"{folder.name}: incomplete diffusers folder ({exc})") from exc
    scheduler: dict[str, Any] = {}
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if scheduler_file.exists():
        scheduler = json.loads(scheduler_file.read_text())
    inpaint = unet.get("in_channels") == 9
    if unet.get("addition_embed_type") == "text_time":
        if "text_encoder" not in index or index.get("text_encoder") in (None, [None, None]):
            return ModelFamily.SDXL_REFINER
        return ModelFamily.SDXL_INPAINT if inpaint else ModelFamily.SDXL
    text_config_file = folder / "text_encoder" / "config.json"
    text_config = json.loads(text_config_file.read_text()) if text_config_file.exists() else {}
    if text_config.get("hidden_act") == "gelu" or unet.get("use_linear_projection"):
        if inpaint:
            return ModelFamily.SD2_INPAINT
        return ModelFamily.SD2_V if scheduler.get("prediction_type") == "v_prediction" else ModelFamily.SD2
    return ModelFamily.SD1_INPAINT if inpaint else ModelFamily.SD1


# ---------------------------------------------------------------------------------------------------------
# Config inference from shapes


@dataclass
class _Level:
    channels: int
    res_blocks: int = 0
    attention: bool = False
    depth: int = 0


@dataclass
class ArchitectureConfigs:
    """diffusers configs for each component of a single-file checkpoint."""

    family: ModelFamily
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any] | None
    text_encoder_2: dict[str, Any] | None
    scheduler: dict[str, Any]
    prefixes: dict[str, str] = field(default_factory=dict)


def _count_indices(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(match.group(1)) for key in shapes if (match := regex.match(key))}
    return max(found) + 1 if found else 0


def infer_unet_config(unet: Shapes, family: ModelFamily | str) -> dict[str, Any]:
    config = bundled_config(family, "unet")
    conv_in = unet["input_blocks.0.0.weight"]
    levels: list[_Level] = [_Level(channels=conv_in[0])]
    index = 1
    while f"input_blocks.{index}.0.op.weight" in unet or f"input_blocks.{index}.0.in_layers.0.weight" in unet:
        if f"input_blocks.{index}.0.op.weight" in unet:
            levels.append(_Level(channels=levels[-1].channels))
        else:
            level = levels[-1]
            out_shape = unet[f"input_blocks.{index}.0.out_layers.3.weight"]
            level.channels = out_shape[0]
            level.res_blocks += 1
            if f"input_blocks.{index}.1.proj_in.weight" in unet:
                level.attention = True
                level.depth = _count_indices(unet, rf"input_blocks\.{index}\.1\.transformer_blocks\.(\d+)\.")
        index += 1
    if not levels or levels[0].res_blocks == 0:
        raise UnknownArchitectureError("UNet layout not understood (no residual blocks found)")
    layers = {level.res_blocks for level in levels}
    if len(layers) != 1:
        raise UnknownArchitectureError(f"UNet with uneven blocks per level {sorted(layers)} is not supported")
    cross_dim = next(
        (shape[1] for key, shape in unet.items() if key.endswith("attn2.to_k.weight")),
        config["cross_attention_dim"],
    )
    proj_in = next((shape for key, shape in unet.items() if key.endswith(".proj_in.weight")), None)
    channels = [level.channels for level in levels]
    depths = [max(level.depth, 1) for level in levels]
    mid_depth = _count_indices(unet, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    if mid_depth:
        depths[-1] = mid_depth  # diffusers sizes the middle block from the last entry
    used = {level.depth for level in levels if level.attention} | ({mid_depth} if mid_depth else set())
    if len(used) == 1:
        depths = [used.pop()] * len(levels)  # one depth everywhere (levels without attention ignore it)
    config.update(
        in_channels=conv_in[1],
        out_channels=unet["out.2.weight"][0],
        block_out_channels=channels,
        layers_per_block=levels[0].res_blocks,
        down_block_types=["CrossAttnDownBlock2D" if lvl.attention else "DownBlock2D" for lvl in levels],
        up_block_types=["CrossAttnUpBlock2D" if lvl.attention else "UpBlock2D" for lvl in reversed(levels)],
        cross_attention_dim=cross_dim,
        use_linear_projection=proj_in is not None and len(proj_in) == 2,
        transformer_layers_per_block=depths if len(set(depths)) > 1 else depths[0],
    )
    if not mid_depth:
        config["mid_block_type"] = "UNetMidBlock2D"
    if isinstance(config.get("attention_head_dim"), list):
        # SD 2.x / SDXL: 64-channel heads; the config field holds the number of heads per level.
        config["attention_head_dim"] = [max(1, ch // 64) for ch in channels]
    label = unet.get("label_emb.0.0.weight")
    if label is not None:
        config["projection_class_embeddings_input_dim"] = label[1]
    time_embed = unet.get("time_embed.0.weight")
    if time_embed is not None and time_embed[0] != channels[0] * 4:
        config["time_embedding_dim"] = time_embed[0]
    return config


def infer_vae_config(vae: Shapes, family: ModelFamily | str) -> dict[str, Any]:
    config = bundled_config(family, "vae")
    levels = _count_indices(vae, r"encoder\.down\.(\d+)\.")
    channels = []
    for level in range(levels):
        conv = vae.get(f"encoder.down.{level}.block.0.conv2.weight")
        if conv is None:
            raise UnknownArchitectureError("VAE layout not understood")
        channels.append(conv[0])
    quant = vae.get("quant_conv.weight") or vae.get("encoder.conv_out.weight")
    if quant is None:
        raise UnknownArchitectureError("VAE has no encoder output convolution")
    config.update(
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        latent_channels=quant[0] // 2,
        layers_per_block=_count_indices(vae, r"encoder\.down\.0\.block\.(\d+)\."),
        in_channels=vae["encoder.conv_in.weight"][1],
        out_channels=vae["decoder.conv_out.weight"][0],
    )
    return config


def _clip_config(
    base: dict[str, Any], vocab: int, positions: int, hidden: int, inter: int, layers: int
) -> dict:
    config = dict(base)
    config.update(
        vocab_size=vocab,
        max_position_embeddings=positions,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
    )
    return config


def infer_hf_clip_config(shapes: Shapes, base: dict[str, Any]) -> dict[str, Any]:
    """CLIP text encoder stored in the transformers layout (``text_model.*``)."""
    token = shapes["text_model.embeddings.token_embedding.weight"]
    positions = shapes["text_model.embeddings.position_embedding.weight"]
    fc1 = shapes["text_model.encoder.layers.0.mlp.fc1.weight"]
    layers = _count_indices(shapes, r"text_model\.encoder\.layers\.(\d+)\.")
    return _clip_config(base, token[0], positions[0], token[1], fc1[0], layers)


def infer_open_clip_config(shapes: Shapes, base: dict[str, Any], *, drop_last_layer: bool) -> dict[str, Any]:
    """OpenCLIP text encoder (``token_embedding``, ``transformer.resblocks.N``)."""
    token = shapes["token_embedding.weight"]
    positions = shapes["positional_embedding"]
    fc = shapes["transformer.resblocks.0.mlp.c_fc.weight"]
    layers = _count_indices(shapes, r"transformer\.resblocks\.(\d+)\.")
    config = _clip_config(
        base, token[0], positions[0], token[1], fc[0], layers - (1 if drop_last_layer else 0)
    )
    projection = shapes.get("text_projection")
    if projection is not None:
        config["projection_dim"] = projection[1]
    return config


def infer_configs(shapes: Shapes, family: ModelFamily) -> ArchitectureConfigs:
    """All component configs for an LDM-layout checkpoint of ``family``."""
    unet = infer_unet_config(_strip(shapes, UNET_PREFIX), family)
    vae_shapes = _strip(shapes, VAE_PREFIX)
    vae = infer_vae_config(vae_shapes, family) if vae_shapes else bundled_config(family, "vae")
    scheduler = bundled_config(family, "scheduler")
    te1: dict[str, Any] | None = None
    te2: dict[str, Any] | None = None
    prefixes = {"unet": UNET_PREFIX, "vae": VAE_PREFIX}
    if family.is_sdxl:
        if family is ModelFamily.SDXL_REFINER:
            te2 = infer_open_clip_config(
                _strip(shapes, REFINER_TE2_PREFIX),
                bundled_config(family, "text_encoder_2"),
                drop_last_layer=False,
            )
            prefixes["text_encoder_2"] = REFINER_TE2_PREFIX
        else:
            te1 = infer_hf_clip_config(
                _strip(shapes, SDXL_TE1_PREFIX), bundled_config(family, "text_encoder")
            )
            te2 = infer_open_clip_config(
                _strip(shapes, SDXL_TE2_PREFIX),
                bundled_config(family, "text_encoder_2"),
                drop_last_layer=False,
            )
            prefixes["text_encoder"] = SDXL_TE1_PREFIX
            prefixes["text_encoder_2"] = SDXL_TE2_PREFIX
    elif family in (ModelFamily.SD2, ModelFamily.SD2_V, ModelFamily.SD2_INPAINT):
        # A1111 uses the penultimate OpenCLIP layer for SD 2.x; the last one is not part of the model.
        te1 = infer_open_clip_config(
            _strip(shapes, SD2_TE_PREFIX), bundled_config(family, "text_encoder"), drop_last_layer=True
        )
        prefixes["text_encoder"] = SD2_TE_PREFIX
    else:
        te1 = infer_hf_clip_config(_strip(shapes, SD1_TE_PREFIX), bundled_config(family, "text_encoder"))
        prefixes["text_encoder"] = SD1_TE_PREFIX
    label = unet.get("projection_class_embeddings_input_dim")
    if family.is_sdxl and te2 is not None and label:
        # The size/crop (and refiner aesthetic-score) embedding: pooled text + N time ids of equal width.
        time_ids = 5 if family is ModelFamily.SDXL_REFINER else 6
        unet["addition_time_embed_dim"] = (label - te2["projection_dim"]) // time_ids
    return ArchitectureConfigs(
        family=family,
        unet=unet,
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        scheduler=scheduler,
        prefixes=prefixes,
    )


# ---------------------------------------------------------------------------------------------------------
# The Stable Diffusion x4 upscaler as one file (``x4-upscaler-ema.safetensors``, the original release)


@dataclass
class SdX4Configs:
    """diffusers configs of every part of a single-file Stable Diffusion x4 upscaler."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any]
    low_res_scheduler: dict[str, Any]
    max_noise_level: int


def is_sd_x4_layout(shapes: Shapes) -> bool:
    """Whether an LDM-layout key → shape map is the x4 upscaler: a UNet taking 7 input channels whose
    class embedding is a table of noise levels (``label_emb.weight``; SDXL's is ``label_emb.0.0.weight``)."""
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    label = shapes.get(UNET_PREFIX + "label_emb.weight")
    return (
        conv_in is not None
        and len(conv_in) == 4
        and conv_in[1] == SD_X4_IN_CHANNELS
        and label is not None
        and len(label) == 2
    )


def _attends_to_text_only(unet: Shapes, block: str) -> bool | None:
    """Whether the first attention of ``block`` (LDM's ``disable_self_attn``) reads the text: its key
    projection then takes the text width instead of the query width. ``None`` when ``block`` has no
    attention. Where the two widths are equal the shapes cannot tell; that is self-attention, as at the
    release's lowest-resolution level (1024 channels, 1024-wide text)."""
    to_q = unet.get(f"{block}.transformer_blocks.0.attn1.to_q.weight")
    to_k = unet.get(f"{block}.transformer_blocks.0.attn1.to_k.weight")
    if to_q is None or to_k is None:
        return None
    return to_k[1] != to_q[1]


def infer_sd_x4_configs(shapes: Shapes, *, name: str = "upscaler") -> SdX4Configs:
    """Configs of a single-file x4 upscaler: the release's (bundled under ``SD_X4``), sized by the shapes."""
    if not is_sd_x4_layout(shapes):
        raise UnknownArchitectureError(
            f"{name}: not the Stable Diffusion x4 upscaler (no UNet with {SD_X4_IN_CHANNELS} input channels "
            f"and a noise-level embedding {UNET_PREFIX}label_emb.weight); refresh the upscaler list"
        )
    unet_shapes = _strip(shapes, UNET_PREFIX)
    unet = infer_unet_config(unet_shapes, SD_X4)
    unet["num_class_embeds"] = unet_shapes["label_emb.weight"][0]
    released = unet["only_cross_attention"]  # the bundled value: infer_unet_config leaves it as it is
    per_level = unet["layers_per_block"] + 1
    only_cross: list[bool] = []
    for level in range(len(unet["block_out_channels"])):
        found = _attends_to_text_only(unet_shapes, f"input_blocks.{1 + level * per_level}.1")
        # A level without attention ignores the flag; keep the release's value there.
        only_cross.append(found if found is not None else level < len(released) and released[level])
    unet["only_cross_attention"] = only_cross
    unet["mid_block_only_cross_attention"] = bool(_attends_to_text_only(unet_shapes, "middle_block.1"))
    vae_shapes = _strip(shapes, VAE_PREFIX)
    text_shapes = _strip(shapes, SD2_TE_PREFIX)
    missing = [part for part, found in (("VAE", vae_shapes), ("text encoder", text_shapes)) if not found]
    if missing:
        raise UnknownArchitectureError(
            f"{name}: the x4 upscaler file has no {' and no '.join(missing)} weights; the file is incomplete"
        )
    index = json.loads((config_root() / SD_X4 / "model_index.json").read_text())
    return SdX4Configs(
        unet=unet,
        vae=infer_vae_config(vae_shapes, SD_X4),
        # The release reads OpenCLIP's penultimate layer, as SD 2.x does; the last one is not used.
        text_encoder=infer_open_clip_config(
            text_shapes, bundled_config(SD_X4, "text_encoder"), drop_last_layer=True
        ),
        scheduler=bundled_config(SD_X4, "scheduler"),
        low_res_scheduler=bundled_config(SD_X4, "low_res_scheduler"),
        max_noise_level=int(index["max_noise_level"]),
    )
