"""The merger service on the tiny checkpoints: titles in, a listed checkpoint with A1111's recipe out."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import _link_or_copy
from webui.domain.generation import Txt2ImgRequest
from webui.domain.merge import MergeError, MergeNameTakenError
from webui.registry.hashes import legacy_hash
from webui.services.models import ModelNotFoundError

UNET_KEY = "model.diffusion_model.out.2.bias"


@pytest.fixture(scope="module")
def variants(tiny_model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two copies of the tiny SD 1.5 with other weights (B and C), the same architecture."""
    root = tmp_path_factory.mktemp("merge-variants")
    original = load_file(str(tiny_model_files["sd15_single"]))
    out: dict[str, Path] = {}
    for seed, name in ((1, "tiny-b"), (2, "tiny-c")):
        generator = torch.Generator().manual_seed(seed)
        state = {
            key: (t + 0.05 * torch.randn(t.shape, generator=generator) if t.is_floating_point() else t)
            for key, t in original.items()
        }
        out[name] = root / f"{name}.safetensors"
        save_file(state, str(out[name]), metadata={"modelspec.title": name})
    return out


@pytest.fixture
def merge_services(
    data_dir: Path, variants: dict[str, Path], tiny_model_files: dict[str, Path]
) -> Iterator[object]:
    from webui.container import build_services
    from webui.settings import Settings

    checkpoints = data_dir / "models" / "Stable-diffusion"
    for name, path in variants.items():
        _link_or_copy(path, checkpoints / f"{name}.safetensors")
    _link_or_copy(tiny_model_files["sdxl_single"], checkpoints / "tiny-sdxl.safetensors")
    built = build_services(Settings(data_dir=data_dir, preload_model=False))
    yield built
    built.generation.shutdown()


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_merge_lists_the_new_checkpoint_with_its_hash_and_a1111_recipe(merge_services) -> None:
    services = merge_services
    seen: list[tuple[str, float]] = []
    title = services.merge.merge(
        "tiny-sd15.safetensors", "tiny-b", method="weighted_sum", multiplier=0.4, name="blend",
        precision="fp16", progress=lambda text, fraction: seen.append((text, fraction)),
    )  # fmt: skip
    path = services.settings.checkpoint_dir / "blend.safetensors"
    digest = _sha256(path)
    assert title == f"blend.safetensors [{digest[:10]}]"
    record = services.models.find(title)
    assert record.family is not None and record.family.value == "sd1"
    assert title in [item["title"] for item in services.models.sd_models_api()]
    fractions = [fraction for _text, fraction in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[-1][0] == f"Saved {title}"

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        assert handle.get_tensor(UNET_KEY).dtype == torch.float16
    assert metadata["format"] == "pt"
    assert metadata["modelspec.title"] == "tiny-b"  # the inputs' metadata is carried over, as A1111 does
    recipe = json.loads(metadata["sd_merge_recipe"])
    a, b = services.models.find("tiny-sd15.safetensors"), services.models.find("tiny-b.safetensors")
    assert recipe == {
        "type": "webui",
        "primary_model_hash": _sha256(a.path),
        "secondary_model_hash": _sha256(b.path),
        "tertiary_model_hash": None,
        "interp_method": "Weighted sum",
        "multiplier": 0.4,
        "save_as_half": True,
        "custom_name": "blend",
        "config_source": 0,
        "bake_in_vae": "None",
        "discard_weights": "",
        "is_inpainting": False,
        "is_instruct_pix2pix": False,
    }
    models = json.loads(metadata["sd_merge_models"])
    assert models == {
        _sha256(r.path): {"name": r.name, "legacy_hash": legacy_hash(r.path), "sd_merge_recipe": None}
        for r in (a, b)
    }
    assert [r.name for r in (a, b)] == ["tiny-sd15.safetensors", "tiny-b.safetensors"]


def test_a_merge_of_a_merge_keeps_its_ancestry(merge_services) -> None:
    services = merge_services
    first = services.merge.merge("tiny-sd15.safetensors", "tiny-b", name="first")
    services.merge.merge(first, "tiny-c", name="second", multiplier=0.5)
    with safe_open(str(services.settings.checkpoint_dir / "second.safetensors"), "pt") as handle:
        models = json.loads(handle.metadata()["sd_merge_models"])
    first_hash = _sha256(services.settings.checkpoint_dir / "first.safetensors")
    assert models[first_hash]["sd_merge_recipe"]["custom_name"] == "first"
    hashes = {_sha256(services.models.find(n).path) for n in ("tiny-sd15.safetensors", "tiny-b", "tiny-c")}
    assert hashes | {first_hash} == set(models)


def test_add_difference_through_the_service(merge_services) -> None:
    services = merge_services
    services.merge.merge(
        "tiny-sd15.safetensors", "tiny-b", "tiny-c", method="Add difference", multiplier=0.5, name="diff",
        precision="fp32",
    )  # fmt: skip
    folder = services.settings.checkpoint_dir
    a, b, c = (load_file(str(folder / f"{n}.safetensors")) for n in ("tiny-sd15", "tiny-b", "tiny-c"))
    out = load_file(str(folder / "diff.safetensors"))
    assert torch.equal(out[UNET_KEY], a[UNET_KEY] + 0.5 * (b[UNET_KEY] - c[UNET_KEY]))


def test_families_diffusers_folders_and_unknown_models_are_refused(merge_services) -> None:
    services = merge_services
    before = sorted(p.name for p in services.settings.checkpoint_dir.iterdir())
    with pytest.raises(
        MergeError, match=r"\(SD 1.x\) and tiny-sdxl.safetensors \(SDXL base\) are of different"
    ):
        services.merge.merge("tiny-sd15.safetensors", "tiny-sdxl.safetensors")
    with pytest.raises(MergeError, match="tiny-sd15-diffusers is a diffusers folder"):
        services.merge.merge("tiny-sd15-diffusers", "tiny-b")
    with pytest.raises(ModelNotFoundError, match="'nope' not found"):
        services.merge.merge("tiny-sd15.safetensors", "nope")
    with pytest.raises(ModelNotFoundError, match="VAE 'missing-vae'"):
        services.merge.merge("tiny-sd15.safetensors", "tiny-b", bake_vae="missing-vae")
    with pytest.raises(MergeError, match="needs a tertiary model"):
        services.merge.merge("tiny-sd15.safetensors", "tiny-b", method="add_difference")
    with pytest.raises(MergeError, match="between 0 and 1"):
        services.merge.merge("tiny-sd15.safetensors", "tiny-b", multiplier=1.5)
    with pytest.raises(MergeError, match="cannot be a checkpoint name"):
        services.merge.merge("tiny-sd15.safetensors", "tiny-b", name="../outside")
    assert sorted(p.name for p in services.settings.checkpoint_dir.iterdir()) == before


def test_an_existing_name_is_refused_and_an_unnamed_merge_gets_a_free_name(merge_services) -> None:
    services = merge_services
    folder = services.settings.checkpoint_dir
    original = (folder / "tiny-b.safetensors").read_bytes()
    with pytest.raises(MergeNameTakenError, match=r"tiny-b\.safetensors already exists"):
        services.merge.merge("tiny-sd15.safetensors", "tiny-c", name="tiny-b.safetensors")
    assert (folder / "tiny-b.safetensors").read_bytes() == original

    first = services.merge.merge("tiny-sd15.safetensors", "tiny-b", multiplier=0.3)
    second = services.merge.merge("tiny-sd15.safetensors", "tiny-b", multiplier=0.3)
    assert first.startswith("0.7(tiny-sd15) + 0.3(tiny-b).safetensors [")
    assert second.startswith("0.7(tiny-sd15) + 0.3(tiny-b)-2.safetensors [")
    unchanged = services.merge.merge("tiny-sd15.safetensors", "", method="no_interpolation", precision="fp16")
    assert unchanged.startswith("tiny-sd15-2.safetensors [")  # A1111 would have overwritten A here
    assert not list(folder.glob(".*"))  # no temporary file is left behind


def test_copy_config_copies_the_sidecars_of_the_first_model_that_has_them(merge_services) -> None:
    services = merge_services
    folder = services.settings.checkpoint_dir
    (folder / "tiny-b.yaml").write_text("model: {}\n")
    (folder / "tiny-sd15.json").write_text('{"description": "base"}')
    services.models.refresh()
    services.merge.merge("tiny-sd15.safetensors", "tiny-b", name="with-config")
    assert (folder / "with-config.yaml").read_text() == "model: {}\n"
    assert json.loads((folder / "with-config.json").read_text()) == {"description": "base"}
    assert services.models.find("with-config").config_path == str(folder / "with-config.yaml")
    services.merge.merge("tiny-sd15.safetensors", "tiny-b", name="without-config", copy_config=False)
    assert not (folder / "without-config.yaml").exists()
    assert not (folder / "without-config.json").exists()


def test_baking_a_vae_from_models_vae(merge_services) -> None:
    services = merge_services
    folder = services.settings.checkpoint_dir
    a = load_file(str(folder / "tiny-sd15.safetensors"))
    vae = {
        k.removeprefix("first_stage_model."): torch.zeros_like(v)
        for k, v in a.items()
        if k.startswith("first_stage_model.")
    }
    services.settings.vae_path.mkdir(parents=True, exist_ok=True)
    save_file(vae, str(services.settings.vae_path / "zero.safetensors"))
    services.merge.merge(
        "tiny-sd15.safetensors",
        "",
        method="no_interpolation",
        name="baked",
        bake_vae="zero.safetensors",
        precision="fp32",
    )
    out = load_file(str(folder / "baked.safetensors"))
    assert all(not out[f"first_stage_model.{k}"].any() for k in vae)
    assert torch.equal(out[UNET_KEY], a[UNET_KEY])
    with safe_open(str(folder / "baked.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["sd_merge_recipe"])["bake_in_vae"] == "zero.safetensors"


def _pixels(png: bytes | None) -> bytes:
    assert png is not None
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


@pytest.mark.slow
def test_alpha_zero_reproduces_the_primary_models_images(merge_services) -> None:
    services = merge_services
    title = services.merge.merge(
        "tiny-sd15.safetensors", "tiny-b", multiplier=0.0, name="alpha0", precision="fp32"
    )
    request = {
        "prompt": "a red circle",
        "seed": 7,
        "width": 64,
        "height": 64,
        "steps": 2,
        "save_images": False,
    }
    original = services.generation.txt2img(Txt2ImgRequest(**request, checkpoint="tiny-sd15.safetensors"))
    merged = services.generation.txt2img(Txt2ImgRequest(**request, checkpoint=title))
    other = services.generation.txt2img(Txt2ImgRequest(**request, checkpoint="tiny-b.safetensors"))
    assert _pixels(merged.images[0].png_bytes) == _pixels(original.images[0].png_bytes)
    assert _pixels(other.images[0].png_bytes) != _pixels(original.images[0].png_bytes)
