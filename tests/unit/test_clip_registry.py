"""Finding CLIP models in models/clip from configs and headers (no torch): layouts, sizes, bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from webui.registry.clip import ClipModelError, openai_config, scan_clip_models


def openai_shapes(
    v_width: int, v_layers: int, patch: int, image: int, t_width: int, t_layers: int, embed: int
) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of an OpenAI-layout CLIP state dict of the given sizes."""
    shapes: dict[str, tuple[int, ...]] = {
        "visual.conv1.weight": (v_width, 3, patch, patch),
        "visual.class_embedding": (v_width,),
        "visual.positional_embedding": ((image // patch) ** 2 + 1, v_width),
        "visual.proj": (v_width, embed),
        "token_embedding.weight": (49408, t_width),
        "positional_embedding": (77, t_width),
        "text_projection": (t_width, embed),
        "logit_scale": (),
    }
    for prefix, width, layers in (
        ("visual.transformer", v_width, v_layers),
        ("transformer", t_width, t_layers),
    ):
        for index in range(layers):
            shapes[f"{prefix}.resblocks.{index}.attn.in_proj_weight"] = (3 * width, width)
            shapes[f"{prefix}.resblocks.{index}.mlp.c_fc.weight"] = (4 * width, width)
    return shapes


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], *, truncate: int = 0) -> Path:
    """A safetensors file with zero-filled F16 tensors of ``shapes`` (optionally cut short)."""
    header: dict[str, object] = {}
    offset = 0
    for name, shape in shapes.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + 2 * count]}
        offset += 2 * count
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + bytes(offset)
    path.write_bytes(data[: len(data) - truncate] if truncate else data)
    return path


@pytest.mark.parametrize(
    ("sizes", "variant", "image_size"),
    [
        ((768, 12, 32, 224, 512, 12, 512), "ViT-B/32", 224),
        ((768, 12, 16, 224, 512, 12, 512), "ViT-B/16", 224),
        ((1024, 24, 14, 224, 768, 12, 768), "ViT-L/14", 224),
        ((1024, 24, 14, 336, 768, 12, 768), "ViT-L/14@336px", 336),
        ((64, 2, 8, 32, 64, 2, 32), None, 32),  # a miniature: sizes from shapes, no published name
    ],
)
def test_openai_layout_sizes_come_from_shapes_and_published_ones_are_named(
    sizes: tuple[int, ...], variant: str | None, image_size: int
) -> None:
    v_width, v_layers, patch, _image, t_width, t_layers, embed = sizes
    config = openai_config(openai_shapes(*sizes))
    assert config.get("variant") == variant
    vision, text = config["vision_config"], config["text_config"]
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["patch_size"]) == (
        v_width,
        v_layers,
        patch,
    )
    assert vision["image_size"] == image_size
    assert vision["num_attention_heads"] == max(1, v_width // 64)
    assert (text["hidden_size"], text["num_hidden_layers"], text["max_position_embeddings"]) == (
        t_width,
        t_layers,
        77,
    )
    assert config["projection_dim"] == embed
    assert vision["intermediate_size"] == 4 * v_width


def test_a_module_prefix_is_stripped() -> None:
    shapes = {f"module.{key}": shape for key, shape in openai_shapes(64, 2, 8, 32, 64, 2, 32).items()}
    assert openai_config(shapes)["vision_config"]["hidden_size"] == 64


def test_unknown_layout_names_the_file_and_what_is_accepted() -> None:
    with pytest.raises(ClipModelError) as info:
        openai_config(
            {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, name="sd.safetensors"
        )
    message = str(info.value)
    assert "sd.safetensors" in message and "OpenAI's CLIP layout" in message and "CLIPModel folder" in message


def test_scan_lists_usable_and_unusable_models_with_reasons(tmp_path: Path) -> None:
    root = tmp_path / "clip"
    root.mkdir()
    shapes = openai_shapes(64, 2, 8, 32, 64, 2, 32)
    write_safetensors(root / "openclip-mini.safetensors", shapes)
    scalars = {"input_resolution": (), "context_length": (), "vocab_size": ()}
    write_safetensors(root / "openai-mini.safetensors", {**shapes, **scalars})
    write_safetensors(root / "truncated.safetensors", shapes, truncate=100)
    write_safetensors(root / "not-clip.safetensors", {"lora_unet_down.alpha": ()})
    (root / "old.pt").write_bytes(b"\x80\x02")
    folder = root / "hf-clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    write_safetensors(folder / "model.safetensors", {"vision_model.x": (1,), "text_model.x": (1,)})
    wrong = root / "a-bert"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"model_type": "bert"}))
    empty = root / "easel-reference-clip"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (root / "interrogate").mkdir()  # phrase lists, not a model
    (root / "interrogate" / "subjects.txt").write_text("a cat\n")

    found = {info.name: info for info in scan_clip_models(root)}
    names = "openclip-mini openai-mini truncated not-clip old hf-clip a-bert easel-reference-clip"
    assert set(found) == set(names.split())
    assert found["openclip-mini"].usable and found["openclip-mini"].kind == "open_clip"
    assert found["openai-mini"].usable and found["openai-mini"].kind == "openai"
    assert found["hf-clip"].usable and found["hf-clip"].kind == "transformers"
    assert found["hf-clip"].weights == folder / "model.safetensors"
    assert "truncated" in (found["truncated"].error or "")
    assert "not a CLIP model" in (found["not-clip"].error or "")
    assert ".safetensors only" in (found["old"].error or "")
    assert "model_type 'bert'" in (found["a-bert"].error or "")
    assert found["easel-reference-clip"].reference and "no weights" in (
        found["easel-reference-clip"].error or ""
    )
    for info in found.values():
        assert info.usable or "Easel reads" in (info.error or "")


def test_missing_folder_is_no_models(tmp_path: Path) -> None:
    assert scan_clip_models(tmp_path / "absent") == []
