"""ControlNet records, scanning ``models/ControlNet`` and sizing ControlNet configs from header shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from webui.domain.controlnet_models import (
    ControlNetKind,
    ControlNetLayout,
    ControlNetRecord,
    base_of_family,
    fits,
)
from webui.domain.models import ModelFamily
from webui.registry.hashes import legacy_hash

ROOT = Path(__file__).resolve().parents[2]

# -- records ------------------------------------------------------------------------------------------------


def _record(name: str, layout: ControlNetLayout = ControlNetLayout.LDM, **extra: Any) -> ControlNetRecord:
    return ControlNetRecord(name=name, path=f"/models/ControlNet/{name}", layout=layout, **extra)


def test_model_name_and_title_follow_the_extension() -> None:
    record = _record("control_v11p_sd15_openpose.pth", legacy_hash="cab727d4")
    assert record.model_name == "control_v11p_sd15_openpose"
    assert record.title == "control_v11p_sd15_openpose [cab727d4]"
    nested = _record("xl/diffusers_xl_canny_full.safetensors")
    assert nested.model_name == "xl/diffusers_xl_canny_full"
    assert nested.title == "xl/diffusers_xl_canny_full"  # no hash: the name alone
    folder = _record("sub/controlnet-canny-sdxl-1.0", ControlNetLayout.DIFFUSERS, legacy_hash="0123abcd")
    assert folder.model_name == "sub/controlnet-canny-sdxl-1.0"
    assert folder.title == "sub/controlnet-canny-sdxl-1.0 [0123abcd]"


def test_records_round_trip_through_json() -> None:
    record = _record("a.safetensors", base="sd1", context_dim=768, legacy_hash="12345678", size=3, mtime=1.5)
    again = ControlNetRecord.model_validate_json(record.model_dump_json())
    assert again == record
    assert again.kind is ControlNetKind.CONTROLNET


def test_every_family_has_a_base() -> None:
    expected = {
        "sd1": "sd1", "sd1-inpaint": "sd1", "sd2": "sd2", "sd2-v": "sd2", "sd2-inpaint": "sd2",
        "sdxl": "sdxl", "sdxl-refiner": "sdxl", "sdxl-inpaint": "sdxl",
    }  # fmt: skip
    assert {family.value: base_of_family(family.value) for family in ModelFamily} == expected
    with pytest.raises(ValueError, match="unknown model family"):
        base_of_family("flux")


def test_fits() -> None:
    sd15 = _record("a.safetensors", base="sd1")
    assert fits(sd15, "sd1") and fits(sd15, "sd1-inpaint")
    assert not fits(sd15, "sdxl") and not fits(sd15, "sd2-v")
    assert fits(_record("b.safetensors", base="sdxl"), "sdxl-refiner")
    unknown = _record("c.pth")
    assert all(fits(unknown, family.value) for family in ModelFamily)


def test_registry_imports_no_torch() -> None:
    code = "import webui.registry.controlnet, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# -- scanning tiny files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controlnet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    from tests.fixtures.controlnet_files import (
        tiny_sd15_controlnet,
        tiny_sdxl_controlnet,
        tiny_t2i_adapter,
        write_controlnet_layouts,
        write_folder,
    )
    from webui.runtime.ldm_layout import save_single_file

    root = tmp_path_factory.mktemp("ControlNet")
    write_controlnet_layouts(tiny_sd15_controlnet(), root, "Tiny-sd15")
    write_controlnet_layouts(tiny_sdxl_controlnet(), root / "xl", "tiny-sdxl")
    write_folder(tiny_t2i_adapter(), root / "adapters" / "tiny-adapter")
    (root / "Tiny-sd15.yaml").write_text("model: {}\n")  # A1111 keeps configs beside; not a model
    (root / "notes.txt").write_text("not a model")
    (root / "broken.safetensors").write_bytes(b"\x00garbage, not a safetensors file" * 4)
    import torch

    save_single_file(  # a Control-LoRA without its hint encoder: listed, with a clear error
        root / "control-lora-canny-rank128.safetensors",
        {"lora_controlnet": torch.zeros(1), "input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
    )
    xs = root / "xs-adapter"
    xs.mkdir()
    (xs / "config.json").write_text(json.dumps({"_class_name": "ControlNetXSAdapter"}))
    vae = root / "some-vae"  # another kind of diffusers folder: not listed
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    return root


def _by_name(root: Path) -> dict[str, ControlNetRecord]:
    from webui.registry.controlnet import scan_controlnets

    return {record.name: record for record in scan_controlnets(root)}


def test_scan_finds_every_layout(controlnet_root: Path) -> None:
    records = _by_name(controlnet_root)
    layouts = {name: (record.layout.value, record.kind.value) for name, record in records.items()}
    assert layouts == {
        "adapters/tiny-adapter": ("t2i_adapter", "t2i_adapter"),
        "broken.safetensors": ("ldm", "controlnet"),
        "control-lora-canny-rank128.safetensors": ("ldm", "controlnet"),  # incomplete: listed with an error
        "Tiny-sd15-diffusers": ("diffusers", "controlnet"),
        "Tiny-sd15-dkeys.safetensors": ("diffusers_file", "controlnet"),
        "Tiny-sd15-pickle.pth": ("ldm", "controlnet"),
        "Tiny-sd15.safetensors": ("ldm", "controlnet"),
        "xl/tiny-sdxl-diffusers": ("diffusers", "controlnet"),
        "xl/tiny-sdxl-dkeys.safetensors": ("diffusers_file", "controlnet"),
        "xl/tiny-sdxl-pickle.pth": ("ldm", "controlnet"),
        "xl/tiny-sdxl.safetensors": ("ldm", "controlnet"),
        "xs-adapter": ("diffusers", "controlnet"),
    }


def test_scan_is_sorted_case_insensitively(controlnet_root: Path) -> None:
    from webui.registry.controlnet import scan_controlnets

    names = [record.name for record in scan_controlnets(controlnet_root)]
    assert names == sorted(names, key=str.lower)
    assert names.index("broken.safetensors") < names.index("Tiny-sd15.safetensors")


def test_bases_and_context_widths_come_from_headers_and_configs(controlnet_root: Path) -> None:
    records = _by_name(controlnet_root)
    for name in ("xl/tiny-sdxl.safetensors", "xl/tiny-sdxl-dkeys.safetensors", "xl/tiny-sdxl-diffusers"):
        assert (records[name].base, records[name].context_dim) == ("sdxl", 192), name
    for name in ("Tiny-sd15.safetensors", "Tiny-sd15-dkeys.safetensors", "Tiny-sd15-diffusers"):
        # The tiny model's 64-wide text embeddings are no published base's: unknown, fits everything.
        assert (records[name].base, records[name].context_dim) == (None, 64), name
    pickle = records["Tiny-sd15-pickle.pth"]
    assert (pickle.base, pickle.context_dim, pickle.error) == (None, None, None)  # never unpickled here


def test_titles_carry_the_legacy_hash(controlnet_root: Path) -> None:
    records = _by_name(controlnet_root)
    single = records["Tiny-sd15.safetensors"]
    assert single.legacy_hash == legacy_hash(controlnet_root / "Tiny-sd15.safetensors")
    assert single.title == f"Tiny-sd15 [{single.legacy_hash}]"
    assert len(single.legacy_hash) == 8 and int(single.legacy_hash, 16) >= 0
    folder = records["xl/tiny-sdxl-diffusers"]
    weights = controlnet_root / "xl" / "tiny-sdxl-diffusers" / "diffusion_pytorch_model.safetensors"
    assert folder.legacy_hash == legacy_hash(weights)
    assert folder.title == f"xl/tiny-sdxl-diffusers [{folder.legacy_hash}]"
    assert records["Tiny-sd15-pickle.pth"].title.startswith("Tiny-sd15-pickle [")
    assert folder.size > weights.stat().st_size > 0 and folder.mtime > 0


def test_unusable_files_are_listed_with_an_error(controlnet_root: Path) -> None:
    records = _by_name(controlnet_root)
    broken = records["broken.safetensors"].error
    assert broken and "broken.safetensors" in broken and "not a safetensors file" in broken
    lora = records["control-lora-canny-rank128.safetensors"].error
    assert lora and "Control-LoRA" in lora and "input_hint_block" in lora and "download it again" in lora
    xs = records["xs-adapter"].error
    assert xs and "ControlNetXSAdapter" in xs and "not supported" in xs
    usable = [name for name, record in records.items() if record.error is None]
    assert len(usable) == 9


def test_truncated_safetensors_is_listed_with_error(controlnet_root: Path, tmp_path: Path) -> None:
    from webui.registry.controlnet import scan_controlnets

    data = (controlnet_root / "Tiny-sd15.safetensors").read_bytes()
    (tmp_path / "half.safetensors").write_bytes(data[: len(data) // 2])
    (record,) = scan_controlnets(tmp_path)
    assert record.error and "truncated" in record.error and "half.safetensors" in record.error


def test_missing_folder_scans_empty(tmp_path: Path) -> None:
    from webui.registry.controlnet import scan_controlnets

    assert scan_controlnets(tmp_path / "nope") == []


# -- identification and config sizing on real, full-size layouts (shapes only) ------------------------------


def _real_layouts(base: str) -> tuple[dict[str, Any], dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """The bundled config of ``base`` and the LDM / diffusers key → shape maps of a published model."""
    pytest.importorskip("accelerate")
    from tests.fixtures.controlnet_files import meta_controlnet
    from webui.registry.controlnet import bundled_controlnet_config
    from webui.runtime.ldm_layout import convert_controlnet

    config = bundled_controlnet_config(base)
    model = meta_controlnet(config)
    ldm = {key: tuple(tensor.shape) for key, tensor in convert_controlnet(model).items()}
    diffusers_keys = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    return config, ldm, diffusers_keys


@pytest.mark.parametrize(
    ("base", "context", "count"), [("sd1", 768, 340), ("sd2", 1024, 340), ("sdxl", 2048, 844)]
)
def test_real_layouts_reproduce_the_bundled_configs(base: str, context: int, count: int) -> None:
    from webui.registry.controlnet import identify_controlnet, infer_controlnet_config

    config, ldm, diffusers_keys = _real_layouts(base)
    assert len(ldm) == len(diffusers_keys) == count
    for shapes, layout in ((ldm, "ldm"), (diffusers_keys, "diffusers_file")):
        identity = identify_controlnet(shapes)
        assert (identity.layout.value, identity.base, identity.context_dim) == (layout, base, context)
        assert infer_controlnet_config(shapes, identity.base) == config
        assert infer_controlnet_config(shapes, None) == config  # the structure picks the same convention


def test_real_sd15_ldm_keys() -> None:
    _config, ldm, _diffusers = _real_layouts("sd1")
    assert ldm["control_model.input_hint_block.0.weight"] == (16, 3, 3, 3)
    assert ldm["control_model.input_hint_block.14.weight"] == (320, 256, 3, 3)
    assert ldm["control_model.zero_convs.11.0.weight"] == (1280, 1280, 1, 1)
    assert ldm["control_model.middle_block_out.0.weight"] == (1280, 1280, 1, 1)
    assert ldm["control_model.input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)


def test_bare_ldm_keys_and_full_checkpoints_with_a_controlnet_inside() -> None:
    from webui.registry.controlnet import identify_controlnet, infer_controlnet_config

    config, ldm, _diffusers = _real_layouts("sd1")
    bare = {key.removeprefix("control_model."): shape for key, shape in ldm.items()}
    assert identify_controlnet(bare).base == "sd1"
    assert infer_controlnet_config(bare, "sd1") == config
    merged = {**ldm, "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
    assert infer_controlnet_config(merged, "sd1") == config


@pytest.mark.parametrize(
    ("depths", "down_types"),
    [
        ([0, 2, 4], ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]),  # a "mid"-like size
        ([1, 1, 1], ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"]),  # a "small"-like size
        ([1, 0, 0], ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]),  # attention, no blocks
    ],
)
def test_sdxl_variants_with_fewer_transformer_layers(depths: list[int], down_types: list[str]) -> None:
    from tests.fixtures.controlnet_files import meta_controlnet
    from webui.registry.controlnet import bundled_controlnet_config, infer_controlnet_config
    from webui.runtime.ldm_layout import convert_controlnet

    config = bundled_controlnet_config("sdxl")
    config.update(transformer_layers_per_block=depths, down_block_types=down_types)
    model = meta_controlnet(config)
    for shapes in (
        {key: tuple(t.shape) for key, t in convert_controlnet(model).items()},
        {key: tuple(t.shape) for key, t in model.state_dict().items()},
    ):
        inferred = infer_controlnet_config(shapes, "sdxl")
        assert inferred["down_block_types"] == down_types
        rebuilt = meta_controlnet(inferred)
        assert {k: tuple(t.shape) for k, t in rebuilt.state_dict().items()} == {
            k: tuple(t.shape) for k, t in model.state_dict().items()
        }


def test_miniature_sizes_are_read_from_shapes() -> None:
    from tests.fixtures.controlnet_files import meta_controlnet
    from webui.registry.controlnet import (
        bundled_controlnet_config,
        conditioning_downscale,
        infer_controlnet_config,
    )
    from webui.runtime.ldm_layout import convert_controlnet

    config = bundled_controlnet_config("sdxl")
    config.update(
        block_out_channels=[32, 64],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        transformer_layers_per_block=[1, 2],
        attention_head_dim=[1, 1],
        cross_attention_dim=192,
        projection_class_embeddings_input_dim=176,
        addition_time_embed_dim=8,
        conditioning_embedding_out_channels=[16, 32, 64],
        conditioning_channels=1,
    )
    shapes = {key: tuple(t.shape) for key, t in convert_controlnet(meta_controlnet(config)).items()}
    inferred = infer_controlnet_config(shapes, "sdxl")
    for key in (
        "block_out_channels", "transformer_layers_per_block", "attention_head_dim", "cross_attention_dim",
        "projection_class_embeddings_input_dim", "addition_time_embed_dim",
        "conditioning_embedding_out_channels", "conditioning_channels",
    ):  # fmt: skip
        assert inferred[key] == config[key], key
    assert conditioning_downscale(inferred) == 4


def test_a_control_lora_of_real_sdxl_shapes_is_identified() -> None:
    """Stability's layout at SDXL's real sizes: rank-128 factors for the encoder's weights, a hint encoder."""
    from tests.fixtures.real_layouts import real_shapes
    from webui.domain.controlnet_models import ControlNetLayout
    from webui.registry.controlnet import identify_controlnet

    prefix = "model.diffusion_model."
    shapes: dict[str, tuple[int, ...]] = {"lora_controlnet": (0,), "input_hint_block.0.weight": (16, 3, 3, 3)}
    for key, shape in real_shapes("sdxl").items():
        stem = key[len(prefix) :].removesuffix(".weight")
        if not key.startswith(prefix) or not stem.startswith(("input_blocks", "middle_block", "label_emb")):
            continue
        if key.endswith(".weight") and len(shape) >= 2:
            shapes[f"{stem}.up"] = (shape[0], 128, *([1, 1] if len(shape) == 4 else []))
            shapes[f"{stem}.down"] = (128, *shape[1:])
    identity = identify_controlnet(shapes, name="control-lora-canny-rank128.safetensors")
    assert identity.layout is ControlNetLayout.CONTROL_LORA
    assert (identity.base, identity.context_dim) == ("sdxl", 2048)


def test_identification_errors_name_the_file() -> None:
    from webui.registry.controlnet import UnsupportedControlNetError, identify_controlnet

    cases = {
        "lora": ({"lora_controlnet": (1,)}, "Control-LoRA"),
        "sd": ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "models/Stable-diffusion"),
        "adapter": ({"body.0.block1.weight": (320, 320, 3, 3)}, "T2I-Adapter"),
        "other": ({"foo.weight": (3,)}, "not a ControlNet"),
        "diff": ({"difference": (1,), "control_model.zero_convs.0.0.weight": (1, 1, 1, 1)}, "difference"),
    }
    for name, (shapes, phrase) in cases.items():
        with pytest.raises(UnsupportedControlNetError, match=phrase) as info:
            identify_controlnet(shapes, name=f"{name}.safetensors")
        assert f"{name}.safetensors" in str(info.value)


def test_header_only_real_file_is_identified_but_reported_truncated(tmp_path: Path) -> None:
    from tests.fixtures.real_layouts import write_header_only
    from webui.registry.controlnet import identify_controlnet, scan_controlnets
    from webui.registry.safetensors_header import read_header

    _config, ldm, _diffusers = _real_layouts("sdxl")
    path = write_header_only(tmp_path / "controlnet-sdxl.safetensors", ldm)
    header = read_header(path, check_size=False)
    identity = identify_controlnet({key: info.shape for key, info in header.tensors.items()})
    assert (identity.base, identity.context_dim) == ("sdxl", 2048)
    (record,) = scan_controlnets(tmp_path)
    assert record.error and "truncated" in record.error
