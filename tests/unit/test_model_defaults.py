"""Per-checkpoint generation defaults: the family table, the sidecar schema, reading and merge-writing it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from webui.domain.model_defaults import (
    SIDECAR_KEY,
    ModelDefaults,
    ModelDefaultsError,
    declared_defaults,
    family_defaults,
    merge_sidecar,
    resolve_defaults,
)
from webui.domain.models import CheckpointRecord, ModelFamily, ModelFormat
from webui.registry.scanner import scan_checkpoints
from webui.services.model_defaults import (
    checkpoint_defaults,
    forget_defaults,
    read_sidecar,
    save_defaults,
    sidecar_path,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = ROOT / "models" / "Stable-diffusion"


def _record(path: Path, family: ModelFamily | None = ModelFamily.SD1) -> CheckpointRecord:
    fmt = ModelFormat.DIFFUSERS if path.is_dir() else ModelFormat.SAFETENSORS
    return CheckpointRecord(name=path.name, path=str(path), format=fmt, size=1, mtime=0.0, family=family)


@pytest.mark.parametrize(
    ("family", "size"),
    [
        (ModelFamily.SD1, 512),
        (ModelFamily.SD1_INPAINT, 512),
        (ModelFamily.SD2, 512),
        (ModelFamily.SD2_V, 768),
        (ModelFamily.SD2_INPAINT, 512),
        (ModelFamily.SDXL, 1024),
        (ModelFamily.SDXL_REFINER, 1024),
        (ModelFamily.SDXL_INPAINT, 1024),
        (None, 512),
    ],
)
def test_family_sizes(family: ModelFamily | None, size: int) -> None:
    defaults = family_defaults(family)
    assert (defaults.width, defaults.height) == (size, size)
    assert (defaults.sampler_name, defaults.scheduler, defaults.steps, defaults.cfg_scale) == (
        "DPM++ 2M",
        "Automatic",
        20,
        7.0,
    )
    assert defaults.clip_skip == 1
    assert defaults.vae is None  # no family VAE: the user's choice is kept


def test_every_family_has_defaults() -> None:
    for family in ModelFamily:
        assert family_defaults(family).width is not None


def test_sidecar_values_override_the_family_one_by_one() -> None:
    sidecar = {"description": "mine", SIDECAR_KEY: {"width": 640, "steps": 30, "vae": "anime.safetensors"}}
    values = resolve_defaults(ModelFamily.SDXL, sidecar)
    assert (values.width, values.height, values.steps) == (640, 1024, 30)
    assert values.sampler_name == "DPM++ 2M"
    assert values.vae == "anime.safetensors"


def test_a1111_sd_version_names_the_family_when_the_file_did_not() -> None:
    assert resolve_defaults(None, {"sd version": "SDXL"}).width == 1024
    assert resolve_defaults(ModelFamily.SD1, {"sd version": "SDXL"}).width == 512  # the file wins


def test_sampler_names_are_normalised_and_legacy_names_split() -> None:
    values = ModelDefaults(sampler_name="k_dpmpp_2m", scheduler="karras")
    assert (values.sampler_name, values.scheduler) == ("DPM++ 2M", "Karras")
    legacy = ModelDefaults(sampler_name="DPM++ 2M Karras")
    assert (legacy.sampler_name, legacy.scheduler) == ("DPM++ 2M", "Karras")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"width": 500}, "multiple of 8"),
        ({"steps": 0}, "steps"),
        ({"sampler_name": "Nope"}, "unknown sampler"),
        ({"scheduler": "Sometimes"}, "unknown schedule type"),
        ({"cfg_scale": "high"}, "cfg_scale"),
    ],
)
def test_bad_declared_values_name_the_field_and_the_file(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ModelDefaultsError, match=message) as info:
        declared_defaults({SIDECAR_KEY: raw}, source="my.json")
    assert "my.json" in str(info.value)


def test_merge_keeps_other_keys_in_order_and_removes_an_empty_section() -> None:
    sidecar = {"description": "d", SIDECAR_KEY: {"width": 64}, "notes": "n"}
    merged = merge_sidecar(sidecar, ModelDefaults(width=128, steps=8))
    assert list(merged) == ["description", SIDECAR_KEY, "notes"]
    assert merged[SIDECAR_KEY] == {"width": 128, "steps": 8}
    assert merge_sidecar(sidecar, ModelDefaults()) == {"description": "d", "notes": "n"}
    assert sidecar[SIDECAR_KEY] == {"width": 64}  # the input is not changed


# ------------------------------------------------------------------------------------------ sidecar files


def test_sidecar_sits_beside_the_file_or_folder(tmp_path: Path) -> None:
    single = tmp_path / "model.v2.safetensors"
    single.write_bytes(b"x")
    folder = tmp_path / "my.model"
    folder.mkdir()
    assert sidecar_path(_record(single)) == tmp_path / "model.v2.json"
    assert sidecar_path(_record(folder)) == tmp_path / "my.model.json"


def test_save_merges_into_an_a1111_metadata_file(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    sidecar = tmp_path / "model.json"
    a1111 = {
        "description": "a painter",
        "sd version": "SD1",
        "activation text": "ptr",
        "preferred weight": 0.8,
    }
    sidecar.write_text(json.dumps({**a1111, SIDECAR_KEY: {"clip_skip": 2, "width": 256}}))
    os.chmod(sidecar, 0o640)
    result = save_defaults(_record(model), {"width": 768, "height": 640, "sampler_name": "Euler a"})
    data = json.loads(sidecar.read_text())
    assert {key: data[key] for key in a1111} == a1111
    assert data[SIDECAR_KEY] == {"width": 768, "height": 640, "sampler_name": "Euler a", "clip_skip": 2}
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o640
    assert (result.values.width, result.values.height, result.values.clip_skip) == (768, 640, 2)
    assert result.values.steps == 20  # still the family's
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_save_creates_a_readable_sidecar(tmp_path: Path) -> None:
    model = tmp_path / "new.safetensors"
    model.write_bytes(b"x")
    save_defaults(_record(model), {"steps": 12})
    sidecar = tmp_path / "new.json"
    assert json.loads(sidecar.read_text()) == {SIDECAR_KEY: {"steps": 12}}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o666 & ~umask


def test_save_refuses_a_bad_value_and_leaves_the_file(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    sidecar = tmp_path / "model.json"
    sidecar.write_text('{"notes": "keep me"}')
    with pytest.raises(ModelDefaultsError, match="multiple of 8"):
        save_defaults(_record(model), {"width": 100})
    assert sidecar.read_text() == '{"notes": "keep me"}'


def test_a_broken_sidecar_is_never_overwritten_and_reads_as_the_family(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    sidecar = tmp_path / "model.json"
    sidecar.write_text('{"notes": "half written",')
    with pytest.raises(ModelDefaultsError, match="not valid JSON"):
        save_defaults(_record(model), {"width": 64})
    assert sidecar.read_text() == '{"notes": "half written",'
    found = checkpoint_defaults(_record(model, ModelFamily.SDXL))
    assert found.values.width == 1024
    assert found.problem is not None and "not valid JSON" in found.problem
    sidecar.write_text("[1, 2]")
    with pytest.raises(ModelDefaultsError, match="JSON object"):
        read_sidecar(sidecar)


def test_forget_removes_only_easels_key(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    sidecar = tmp_path / "model.json"
    sidecar.write_text(json.dumps({"notes": "n", SIDECAR_KEY: {"width": 64}}))
    assert forget_defaults(_record(model)).values.width == 512
    assert json.loads(sidecar.read_text()) == {"notes": "n"}
    sidecar.write_text(json.dumps({SIDECAR_KEY: {"width": 64}}))
    forget_defaults(_record(model))
    assert not sidecar.exists()


def test_the_shipped_reference_model_declares_64_pixels() -> None:
    records = [r for r in scan_checkpoints(REFERENCE_DIR) if r.name == "easel-reference"]
    assert len(records) == 1, "the reference model is shipped as a diffusers folder"
    found = checkpoint_defaults(records[0])
    assert found.problem is None
    assert found.sidecar == REFERENCE_DIR / "easel-reference.json"
    assert (found.values.width, found.values.height) == (64, 64)
    assert (found.values.sampler_name, found.values.scheduler) == ("DPM++ 2M", "Karras")
    assert (found.values.steps, found.values.cfg_scale) == (20, 7.0)
    assert found.family is ModelFamily.SD1
    assert json.loads(found.sidecar.read_text())["sd version"] == "SD1"  # A1111's keys are there too
