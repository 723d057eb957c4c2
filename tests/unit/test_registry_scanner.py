"""Scanning model folders: what is listed, how it is named, and how bad files are reported."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import pytest

from webui.domain.models import ModelFamily, ModelFormat
from webui.registry import scanner
from webui.registry.scanner import scan_checkpoints, scan_files, scan_vae_files

UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"


def _write_safetensors(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> Path:
    """A complete little F16 safetensors file (zeros) with these tensors."""
    header: dict[str, object] = {}
    offset = 0
    for key, shape in shapes.items():
        size = 2
        for dim in shape:
            size *= dim
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def _fake_detect(shapes: Mapping[str, tuple[int, ...]], name: str) -> ModelFamily:
    if UNET_KEY in shapes:
        return ModelFamily.SD1_INPAINT if shapes[UNET_KEY][1] == 9 else ModelFamily.SD1
    raise ValueError("not a Stable Diffusion checkpoint (no UNet weights found)")


@pytest.fixture
def fake_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanner, "_detect_family", _fake_detect)
    monkeypatch.setattr(scanner, "_detect_diffusers_family", lambda folder: ModelFamily.SDXL)


def _diffusers_folder(path: Path) -> Path:
    (path / "unet").mkdir(parents=True)
    (path / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    (path / "unet" / "config.json").write_text("{}")
    (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 100)
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "Stable-diffusion"
    _write_safetensors(root / "b-model.safetensors", {UNET_KEY: (320, 4, 3, 3)})
    _write_safetensors(root / "A-model.safetensors", {UNET_KEY: (320, 9, 3, 3)})
    _write_safetensors(root / "sub" / "deeper" / "nested.safetensors", {UNET_KEY: (320, 4, 3, 3)})
    (root / "sub" / "deeper" / "nested.yaml").write_text("model: {}\n")
    (root / "sub" / "old.ckpt").write_bytes(b"PK")
    (root / "sub" / "Old2.pt").write_bytes(b"PK")
    (root / "weights.pth").write_bytes(b"PK")
    _diffusers_folder(root / "sub" / "my-diffusers")
    # Junk that must be ignored.
    (root / ".gitkeep").write_text("")
    (root / "Put Stable Diffusion checkpoints here.txt").write_text("")
    _write_safetensors(root / ".hidden.safetensors", {UNET_KEY: (1,)})
    _write_safetensors(root / ".cache" / "x.safetensors", {UNET_KEY: (1,)})
    _write_safetensors(root / "b-model.vae.safetensors", {"encoder.conv_in.weight": (1,)})
    (root / "preview.png").write_bytes(b"\x89PNG")
    return root


def test_finds_files_folders_and_configs(model_dir: Path, fake_architecture: None) -> None:
    records = scan_checkpoints(model_dir)
    names = [record.name for record in records]
    assert names == [
        "A-model.safetensors",
        "b-model.safetensors",
        "sub/deeper/nested.safetensors",
        "sub/my-diffusers",
        "sub/old.ckpt",
        "sub/Old2.pt",
        "weights.pth",
    ]
    by_name = {record.name: record for record in records}

    a = by_name["A-model.safetensors"]
    assert a.format is ModelFormat.SAFETENSORS
    assert a.family is ModelFamily.SD1_INPAINT and a.family_error is None
    assert a.path == str(model_dir / "A-model.safetensors")
    assert a.size == (model_dir / "A-model.safetensors").stat().st_size
    assert a.mtime == (model_dir / "A-model.safetensors").stat().st_mtime
    assert a.config_path is None
    assert a.model_name == "A-model"

    nested = by_name["sub/deeper/nested.safetensors"]
    assert nested.family is ModelFamily.SD1
    assert nested.config_path == str(model_dir / "sub" / "deeper" / "nested.yaml")

    folder = by_name["sub/my-diffusers"]
    assert folder.format is ModelFormat.DIFFUSERS
    assert folder.family is ModelFamily.SDXL
    assert folder.size > 100

    for name in ("sub/old.ckpt", "sub/Old2.pt", "weights.pth"):
        assert by_name[name].format is ModelFormat.CKPT
        assert by_name[name].family is None
        assert by_name[name].family_error == "identified when loaded"


def test_records_are_serialisable(model_dir: Path, fake_architecture: None) -> None:
    records = scan_checkpoints(model_dir)
    assert [type(r).model_validate_json(r.model_dump_json()) for r in records] == records


def test_bad_files_are_listed_with_a_clear_error(tmp_path: Path, fake_architecture: None) -> None:
    root = tmp_path / "models"
    good = _write_safetensors(root / "good.safetensors", {UNET_KEY: (320, 4, 3, 3)})
    truncated = _write_safetensors(root / "truncated.safetensors", {UNET_KEY: (320, 4, 3, 3)})
    truncated.write_bytes(truncated.read_bytes()[:-100])
    (root / "html.safetensors").write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    (root / "empty.safetensors").write_bytes(b"")
    _write_safetensors(root / "lora-ish.safetensors", {"lora_unet_down.alpha": (1,)})

    records = {record.name: record for record in scan_checkpoints(root)}
    assert len(records) == 5
    assert records["good.safetensors"].family is ModelFamily.SD1
    assert good.exists()

    error = records["truncated.safetensors"].family_error
    assert records["truncated.safetensors"].family is None
    assert error is not None and "truncated" in error and "truncated.safetensors" in error

    error = records["html.safetensors"].family_error
    assert error is not None and "not a safetensors file" in error and "html.safetensors" in error

    error = records["empty.safetensors"].family_error
    assert error is not None and "empty" in error

    error = records["lora-ish.safetensors"].family_error
    assert error is not None and "lora-ish.safetensors" in error and "not a Stable Diffusion" in error


def test_broken_diffusers_folder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(folder: Path) -> ModelFamily:
        raise ValueError("incomplete diffusers folder (unet/config.json missing)")

    monkeypatch.setattr(scanner, "_detect_diffusers_family", broken)
    _diffusers_folder(tmp_path / "pipe")
    (record,) = scan_checkpoints(tmp_path)
    assert record.family is None
    assert record.family_error == "pipe: incomplete diffusers folder (unet/config.json missing)"


def test_unknown_file_with_real_rules(tmp_path: Path) -> None:
    pytest.importorskip("webui.registry.architecture")
    _write_safetensors(tmp_path / "lora.safetensors", {"lora_unet_down_blocks_0.alpha": (1,)})
    (record,) = scan_checkpoints(tmp_path)
    assert record.family is None
    assert record.family_error is not None and record.family_error.startswith("lora.safetensors: ")


def test_missing_root_is_empty(tmp_path: Path) -> None:
    assert scan_checkpoints(tmp_path / "absent") == []
    assert scan_files(tmp_path / "absent", [".safetensors"]) == []


def test_symlink_loop_does_not_hang(tmp_path: Path, fake_architecture: None) -> None:
    _write_safetensors(tmp_path / "sub" / "m.safetensors", {UNET_KEY: (320, 4, 3, 3)})
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert [record.name for record in scan_checkpoints(tmp_path)] == ["sub/m.safetensors"]


def test_scan_files_for_lora_and_vae(tmp_path: Path) -> None:
    lora = tmp_path / "Lora"
    for name in ("style.safetensors", "sub/Char.pt", "old.ckpt", "readme.md", ".hidden.safetensors"):
        path = lora / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = scan_files(lora, scanner.LORA_EXTENSIONS)
    assert [p.relative_to(lora).as_posix() for p in found] == ["old.ckpt", "style.safetensors", "sub/Char.pt"]

    vae_dir, ckpt_dir = tmp_path / "VAE", tmp_path / "Stable-diffusion"
    vae_dir.mkdir()
    ckpt_dir.mkdir()
    (vae_dir / "kl-f8.safetensors").write_bytes(b"x")
    (vae_dir / "old.vae.pt").write_bytes(b"x")
    (vae_dir / "notes.txt").write_bytes(b"x")
    (ckpt_dir / "model.safetensors").write_bytes(b"x")
    (ckpt_dir / "model.vae.safetensors").write_bytes(b"x")
    found = scan_vae_files(vae_dir, ckpt_dir)
    assert found == [
        vae_dir / "kl-f8.safetensors",
        vae_dir / "old.vae.pt",
        ckpt_dir / "model.vae.safetensors",
    ]


def test_scan_with_real_architecture_rules(tmp_path: Path) -> None:
    """End to end with the real identification rules, on tiny checkpoints in the real LDM layout."""
    pytest.importorskip("webui.registry.architecture")
    pytest.importorskip("diffusers")
    import torch

    from tests.fixtures.tiny_models import tiny_sd15_components, tiny_sdxl_components
    from webui.runtime.ldm_layout import diffusers_to_ldm_state_dict, save_single_file

    sd15 = tiny_sd15_components(tokenizer=object())
    sdxl = tiny_sdxl_components(tokenizer=object(), tokenizer_2=object())
    layouts = {
        "sd15.safetensors": diffusers_to_ldm_state_dict(
            sd15["unet"], sd15["vae"], sd15["text_encoder"], family="sd1"
        ),
        "xl/sdxl.safetensors": diffusers_to_ldm_state_dict(
            sdxl["unet"], sdxl["vae"], sdxl["text_encoder"], sdxl["text_encoder_2"], family="sdxl"
        ),
    }
    for name, state in layouts.items():
        save_single_file(tmp_path / name, state, dtype=torch.float16)
    records = {record.name: record for record in scan_checkpoints(tmp_path)}
    assert records["sd15.safetensors"].family is ModelFamily.SD1, records["sd15.safetensors"].family_error
    assert records["xl/sdxl.safetensors"].family is ModelFamily.SDXL, records[
        "xl/sdxl.safetensors"
    ].family_error


X4_LAYOUT = {UNET_KEY: (32, 7, 3, 3), "model.diffusion_model.label_emb.weight": (1000, 32)}


def _x4_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model_index.json").write_text('{"_class_name": "StableDiffusionUpscalePipeline"}')
    (path / "unet").mkdir()
    (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    return path


def test_sd_x4_upscaler_is_an_upscaler_not_a_checkpoint_with_one_read_per_file(
    tmp_path: Path, fake_architecture: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both lists agree at any depth (folders and single files, a truncated single file too), and reading
    the checkpoint folder for both lists reads each file's header once."""
    from webui.registry.upscalers import scan_upscalers

    root = tmp_path / "Stable-diffusion"
    _write_safetensors(root / "sd.safetensors", {UNET_KEY: (320, 4, 3, 3)})
    _write_safetensors(root / "sub" / "x4-upscaler-ema.safetensors", X4_LAYOUT)
    truncated = _write_safetensors(root / "x4-truncated.safetensors", X4_LAYOUT)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    _x4_folder(root / "sub" / "deeper" / "x4-folder")
    _diffusers_folder(root / "sub" / "my-diffusers")
    # A diffusers folder in ESRGAN is no pile of model files.
    _diffusers_folder(tmp_path / "ESRGAN" / "not-an-upscaler")

    reads: list[str] = []
    real_read_header = scanner.read_header

    def counting_read_header(path: Path, *, check_size: bool = True):  # type: ignore[no-untyped-def]
        reads.append(Path(path).name)
        return real_read_header(path, check_size=check_size)

    monkeypatch.setattr(scanner, "read_header", counting_read_header)
    assert [record.name for record in scan_checkpoints(root)] == ["sd.safetensors", "sub/my-diffusers"]
    upscalers = {record.name: record for record in scan_upscalers(tmp_path)}
    scan_checkpoints(root)
    scan_upscalers(tmp_path)
    assert {name: upscalers[name].kind for name in upscalers if upscalers[name].path is not None} == {
        "x4-folder": "sd-x4",
        "x4-truncated": "sd-x4",
        "x4-upscaler-ema": "sd-x4",
    }
    # Each file once; only the truncated one a second time, without the size check, to see what it is.
    assert sorted(reads) == [
        "sd.safetensors",
        "x4-truncated.safetensors",
        "x4-truncated.safetensors",
        "x4-upscaler-ema.safetensors",
    ]


def test_upscalers_are_found_in_the_checkpoint_dir_given(tmp_path: Path) -> None:
    from webui.registry.upscalers import scan_upscalers

    custom = tmp_path / "elsewhere"
    _write_safetensors(custom / "a" / "x4-file.safetensors", X4_LAYOUT)
    _x4_folder(custom / "a" / "b" / "x4-folder")
    _x4_folder(tmp_path / "models" / "Stable-diffusion" / "x4-default")
    names = [record.name for record in scan_upscalers(tmp_path / "models", custom)]
    assert names[3:] == ["x4-file", "x4-folder"]
    assert "x4-default" in [record.name for record in scan_upscalers(tmp_path / "models")]
