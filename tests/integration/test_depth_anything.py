"""Depth Anything v1/v2 preprocessors on CPU, from miniature files in the published files' key layout.

The files (``tests/fixtures/depth_anything_files.py``) are written under the published names into a
temporary ``models/annotators``; the loader reads their sizes from the shapes, so a 64-wide ViT stands in
for ViT-L. Nothing is downloaded except from a local HTTP server.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.fixtures.depth_anything_files import (
    VITB,
    VITL,
    VITS,
    Sizes,
    depth_anything_state,
    original_shapes,
    write_depth_anything_file,
)
from webui.domain.controlnet_modules import (
    ANNOTATOR_URLS,
    DEPTH_ANYTHING_FILE,
    DEPTH_ANYTHING_V2_FILE,
)
from webui.runtime.controlnet.depth_anything import (
    DepthAnythingError,
    build_config,
    load_depth_anything,
    out_indices,
    read_layout,
    rename_original_keys,
    version_from_name,
)
from webui.runtime.controlnet.preprocessors import (
    AnnotatorLoadError,
    AnnotatorStore,
    AnnotatorWeightsMissing,
    Preprocessors,
)

SIZE = (64, 48)  # the test picture
RES = 64  # short side 48 -> 64: the map is 85x64
MAP_SIZE = (85, 64)
DEFAULTS = {"depth_anything": DEPTH_ANYTHING_FILE, "depth_anything_v2": DEPTH_ANYTHING_V2_FILE}
V1_URL = "https://huggingface.co/spaces/LiheYoung/Depth-Anything/resolve/main/checkpoints/depth_anything_vitl14.pth"
V2_URL = (
    "https://huggingface.co/MackinationsAi/Depth-Anything-V2_Safetensors/resolve/main/"
    "depth_anything_v2_vitl.safetensors"
)


def picture() -> Image.Image:
    """A bright sky over a dark ground, a mid-grey box: something with structure to see."""
    image = Image.new("RGB", SIZE, (170, 200, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 30, 63, 47), fill=(60, 50, 40))
    draw.rectangle((20, 12, 40, 36), fill=(128, 128, 128))
    return image


def other_picture() -> Image.Image:
    image = Image.new("RGB", SIZE, (20, 40, 200))
    ImageDraw.Draw(image).polygon([(5, 44), (32, 4), (60, 44)], fill=(250, 250, 90))
    return image


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def runner(root: Path, *, download: bool = False, **store: Any) -> Preprocessors:
    return Preprocessors(AnnotatorStore(root, allow_download=download, **store))


@pytest.fixture
def annotators(tmp_path: Path) -> Path:
    """``models/annotators`` holding both modules' default files (the same miniature network)."""
    root = tmp_path / "models" / "annotators"
    write_depth_anything_file(root / DEPTH_ANYTHING_FILE, seed=3)
    write_depth_anything_file(root / DEPTH_ANYTHING_V2_FILE, seed=3)
    return root


# -- running ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["depth_anything", "depth_anything_v2"])
def test_the_module_makes_a_grey_depth_map_over_the_full_range(module: str, annotators: Path) -> None:
    preprocessors = runner(annotators)
    result = preprocessors.run(module, picture(), resolution=RES)
    depth = pixels(result.image)
    assert result.module == module and result.poses is None
    assert result.image.size == MAP_SIZE  # the picture's aspect ratio at the processing resolution
    assert np.array_equal(depth[:, :, 0], depth[:, :, 1]) and np.array_equal(depth[:, :, 0], depth[:, :, 2])
    assert depth.min() == 0 and depth.max() == 255  # min-max normalised
    assert len(np.unique(depth)) > 64  # spread over the range, not two levels
    assert np.array_equal(depth, pixels(preprocessors.run(module, picture(), resolution=RES).image))
    assert not np.array_equal(depth, pixels(preprocessors.run(module, other_picture(), resolution=RES).image))
    assert preprocessors.loaded() == [module]


def test_the_resolution_sets_the_map_size(annotators: Path) -> None:
    preprocessors = runner(annotators)
    assert preprocessors.run("depth_anything", picture(), resolution=128).image.size == (171, 128)
    tall = picture().transpose(Image.Transpose.ROTATE_90)
    assert preprocessors.run("depth_anything", tall, resolution=100).image.size == (100, 133)
    assert preprocessors.run("depth_anything", picture(), resolution=10).image.size == (683, 512)  # default


def test_the_network_runs_at_multiples_of_the_patch_size(annotators: Path) -> None:
    estimator = load_depth_anything(annotators / DEPTH_ANYTHING_FILE)
    seen: list[tuple[int, ...]] = []
    hook = estimator.model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["pixel_values"].shape), with_kwargs=True
    )
    try:
        estimator.depth_map(np.asarray(picture().resize((85, 64))))
    finally:
        hook.remove()
    assert seen == [(1, 3, 70, 84)]  # 64 -> 70 and 85 -> 84: the nearest multiples of 14


def test_near_is_bright() -> None:
    """Depth Anything predicts inverse depth (large = near); the map keeps that order."""

    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Config", (), {"patch_size": 14, "depth_estimation_type": "relative"})()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, pixel_values: torch.Tensor) -> object:
            height, width = pixel_values.shape[2:]
            ramp = torch.linspace(0.0, 5.0, height)[:, None].expand(height, width)  # nearer further down
            return type("Output", (), {"predicted_depth": ramp[None] + self.weight})()

    from webui.runtime.controlnet.depth_anything import DepthAnything

    depth = DepthAnything(Fixed(), version=1, variant="test", source=Path("x")).depth_map(
        np.zeros((56, 42, 3), np.uint8)
    )
    assert depth.shape == (56, 42)
    assert depth[0].max() < 10 and depth[-1].min() > 245


# -- v1 / v2 and sizes --------------------------------------------------------------------------------------


def test_v1_and_v2_are_told_apart(annotators: Path) -> None:
    v1 = load_depth_anything(annotators / DEPTH_ANYTHING_FILE)
    v2 = load_depth_anything(annotators / DEPTH_ANYTHING_V2_FILE)
    assert (v1.version, v2.version) == (1, 2)
    assert list(v1.model.config.backbone_config.out_indices) == [9, 10, 11, 12]  # the last four blocks
    assert list(v2.model.config.backbone_config.out_indices) == [3, 6, 9, 12]  # spread over the depth
    preprocessors = runner(annotators)
    first = pixels(preprocessors.run("depth_anything", picture(), resolution=RES).image)
    second = pixels(preprocessors.run("depth_anything_v2", picture(), resolution=RES).image)
    assert not np.array_equal(first, second)  # same tensors, different blocks feed the head
    assert sorted(preprocessors.loaded()) == ["depth_anything", "depth_anything_v2"]


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("depth_anything_vitl14.pth", 1),
        ("depth_anything_vits14.safetensors", 1),
        ("depth_anything_v2_vitb.pth", 2),
        ("depth_anything_v2_vitl.safetensors", 2),
        ("Depth-Anything-V2-Small-hf", 2),
        ("model.pth", None),
    ],
)
def test_version_from_the_file_name(name: str, version: int | None) -> None:
    assert version_from_name(name) == version


def test_out_indices_of_the_published_depths() -> None:
    assert out_indices(1, 24) == [21, 22, 23, 24]
    assert out_indices(2, 12) == [3, 6, 9, 12]
    assert out_indices(2, 24) == [5, 12, 18, 24]
    assert out_indices(2, 8) == [2, 4, 6, 8]
    with pytest.raises(DepthAnythingError):
        out_indices(1, 3)


def _meta_state(sizes: Sizes) -> dict[str, torch.Tensor]:
    """Tensors of a published file's shapes without their memory."""
    return {key: torch.empty(shape, device="meta") for key, shape in original_shapes(sizes).items()}


@pytest.mark.parametrize(
    ("sizes", "variant", "layers", "heads"),
    [(VITS, "vits", 12, 6), (VITB, "vitb", 12, 12), (VITL, "vitl", 24, 16)],
)
@pytest.mark.parametrize("version", [1, 2])
def test_published_sizes_map_onto_every_tensor_of_transformers_model(
    sizes: Sizes, variant: str, layers: int, heads: int, version: int
) -> None:
    """ViT-S/B/L shapes: the layout is read from the shapes, and the renamed keys are exactly the model's."""
    from transformers import DepthAnythingForDepthEstimation

    state = _meta_state(sizes)
    layout = read_layout(state)
    assert (layout.variant, layout.num_layers, layout.num_heads) == (variant, layers, heads)
    assert (layout.image_size, layout.patch_size, layout.neck_sizes) == (518, 14, sizes.neck)
    assert (layout.fusion_size, layout.head_size) == (sizes.fusion, 32)
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(build_config(layout, version))
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    renamed, unplaced = rename_original_keys(state, set(expected))
    assert unplaced == []
    assert {key: tuple(value.shape) for key, value in renamed.items()} == expected
    model.load_state_dict(renamed, strict=True, assign=True)  # nothing missing, nothing unexpected


def test_the_loaded_model_holds_every_tensor_of_the_file(annotators: Path) -> None:
    original = depth_anything_state(3)
    model = load_depth_anything(annotators / DEPTH_ANYTHING_FILE).model
    weights = list(model.state_dict().values())
    assert sum(t.numel() for t in weights) == sum(t.numel() for t in original.values())

    def held(tensor: torch.Tensor) -> bool:
        return any(w.shape == tensor.shape and torch.equal(w, tensor) for w in weights)

    for key, tensor in original.items():
        if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):  # split into query, key and value
            assert all(held(part) for part in tensor.chunk(3)), key
        else:
            assert held(tensor), key
    # the places that are easy to get wrong: the fusion order, the head's convolutions, the layer scales
    neck, head = model.neck, model.head
    assert torch.equal(
        neck.fusion_stage.layers[0].projection.weight,
        original["depth_head.scratch.refinenet4.out_conv.weight"],
    )
    assert torch.equal(
        neck.fusion_stage.layers[3].residual_layer1.convolution2.bias,
        original["depth_head.scratch.refinenet1.resConfUnit1.conv2.bias"],
    )
    assert torch.equal(neck.convs[2].weight, original["depth_head.scratch.layer3_rn.weight"])
    assert torch.equal(
        neck.reassemble_stage.layers[3].resize.weight, original["depth_head.resize_layers.3.weight"]
    )
    assert torch.equal(head.conv3.bias, original["depth_head.scratch.output_conv2.2.bias"])
    layer = model.backbone.encoder.layer[5]
    assert torch.equal(layer.layer_scale2.lambda1, original["pretrained.blocks.5.ls2.gamma"])
    assert torch.equal(model.backbone.embeddings.position_embeddings, original["pretrained.pos_embed"])


def test_a_half_precision_file_loads_as_float32(tmp_path: Path) -> None:
    path = write_depth_anything_file(tmp_path / DEPTH_ANYTHING_V2_FILE, dtype=torch.float16)
    estimator = load_depth_anything(path)
    assert {p.dtype for p in estimator.model.parameters()} == {torch.float32}
    assert estimator.depth_map(np.asarray(picture())).max() == 255


# -- where the files are found ------------------------------------------------------------------------------


def test_other_sizes_and_the_extensions_subfolders_are_found(tmp_path: Path) -> None:
    root = tmp_path / "annotators"
    small = write_depth_anything_file(root / "depth_anything_v2" / "depth_anything_v2_vits.pth", seed=5)
    preprocessors = runner(root)
    assert preprocessors.run("depth_anything_v2", picture(), resolution=RES).image.size == MAP_SIZE
    assert preprocessors._loaded["depth_anything_v2"].source == small
    with pytest.raises(AnnotatorWeightsMissing):  # a v2 file is not taken for v1
        preprocessors.run("depth_anything", picture(), resolution=RES)


def test_the_default_file_wins_over_other_sizes(annotators: Path) -> None:
    write_depth_anything_file(annotators / "depth_anything_vits14.pth", seed=9)
    preprocessors = runner(annotators)
    preprocessors.load("depth_anything")
    assert preprocessors._loaded["depth_anything"].source == annotators / DEPTH_ANYTHING_FILE


def test_a_transformers_folder_loads(annotators: Path, tmp_path: Path) -> None:
    single = load_depth_anything(annotators / DEPTH_ANYTHING_V2_FILE)
    root = tmp_path / "folder-only"
    single.model.save_pretrained(root / "Depth-Anything-V2-Small-hf")
    preprocessors = runner(root)
    from_folder = pixels(preprocessors.run("depth_anything_v2", picture(), resolution=RES).image)
    loaded = preprocessors._loaded["depth_anything_v2"]
    assert (loaded.version, loaded.source.name) == (2, "Depth-Anything-V2-Small-hf")
    from_file = pixels(runner(annotators).run("depth_anything_v2", picture(), resolution=RES).image)
    assert np.array_equal(from_folder, from_file)


# -- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("module", "url"), [("depth_anything", V1_URL), ("depth_anything_v2", V2_URL)])
def test_a_missing_file_names_the_file_the_folder_and_its_url(module: str, url: str, tmp_path: Path) -> None:
    root = tmp_path / "annotators"
    preprocessors = runner(root)
    with pytest.raises(AnnotatorWeightsMissing) as caught:
        preprocessors.run(module, picture(), resolution=RES)
    error = caught.value
    assert error.filename == DEFAULTS[module]
    assert (error.folder, error.url) == (root, url)
    assert DEFAULTS[module] in str(error) and str(root) in str(error) and url in str(error)
    assert "downloads are off" in str(error)
    assert preprocessors.loaded() == []
    assert not root.exists() or not any(root.iterdir())  # nothing written


@pytest.mark.parametrize("filename", [DEPTH_ANYTHING_FILE, DEPTH_ANYTHING_V2_FILE])
def test_a_truncated_file_is_a_load_error_naming_it(filename: str, tmp_path: Path) -> None:
    root = tmp_path / "annotators"
    path = write_depth_anything_file(root / filename)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    module = "depth_anything_v2" if "v2" in filename else "depth_anything"
    preprocessors = runner(root)
    with pytest.raises(AnnotatorLoadError, match=rf"{re.escape(filename)}.*incomplete or corrupt") as caught:
        preprocessors.run(module, picture(), resolution=RES)
    assert DEFAULTS[module] in str(caught.value) and ANNOTATOR_URLS[DEFAULTS[module]] in str(caught.value)
    assert preprocessors.loaded() == []


def test_a_file_of_another_network_is_a_load_error(tmp_path: Path) -> None:
    root = tmp_path / "annotators"
    root.mkdir()
    torch.save(
        {"conv.weight": torch.zeros(4, 3, 3, 3), "conv.bias": torch.zeros(4)}, root / DEPTH_ANYTHING_FILE
    )
    with pytest.raises(
        AnnotatorLoadError, match=r"depth_anything_vitl14\.pth.*not a Depth Anything checkpoint"
    ):
        runner(root).run("depth_anything", picture(), resolution=RES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.pop("depth_head.scratch.refinenet2.out_conv.bias"),
            r"1 weights missing \(first: neck\.fusion_stage\.layers\.2\.projection\.bias",
        ),
        (lambda s: s.pop("pretrained.blocks.4.attn.qkv.weight"), r"3 weights missing"),
        (
            lambda s: s.__setitem__("depth_head.readout_projects.0.0.weight", torch.zeros(2)),
            r"1 unexpected weights \(first: depth_head\.readout_projects",
        ),
        (lambda s: s.__setitem__("pretrained.blocks.0.mlp.fc2.bias", torch.zeros(7)), r"does not fit"),
        (lambda s: s.__setitem__("pretrained.pos_embed", torch.zeros(1, 11, 64)), r"not a square grid"),
    ],
)
def test_a_file_that_does_not_fit_is_a_clear_error(tmp_path: Path, change: object, message: str) -> None:
    state = depth_anything_state(0)
    change(state)  # type: ignore[operator]
    path = tmp_path / DEPTH_ANYTHING_FILE
    torch.save(state, path)
    with pytest.raises(DepthAnythingError, match=message) as caught:
        load_depth_anything(path)
    assert DEPTH_ANYTHING_FILE in str(caught.value)


def test_a_transformers_format_single_file_says_to_use_the_folder(annotators: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = load_depth_anything(annotators / DEPTH_ANYTHING_V2_FILE).model
    path = tmp_path / DEPTH_ANYTHING_V2_FILE
    save_file({key: value.clone() for key, value in model.state_dict().items()}, str(path))
    with pytest.raises(DepthAnythingError, match=r"transformers-format.*folder"):
        load_depth_anything(path)


# -- downloads ----------------------------------------------------------------------------------------------


def test_the_store_knows_where_depth_anything_files_are_published(tmp_path: Path) -> None:
    store = AnnotatorStore(tmp_path, allow_download=False)
    assert store.url(DEPTH_ANYTHING_FILE) == V1_URL
    assert store.url(DEPTH_ANYTHING_V2_FILE) == V2_URL
    assert store.url("depth_anything_v2_vits.pth") == (
        "https://huggingface.co/depth-anything/Depth-Anything-V2-Small/resolve/main/depth_anything_v2_vits.pth"
    )
    assert store.url("netG.pth") == "https://huggingface.co/lllyasviel/Annotators/resolve/main/netG.pth"
    mirror = AnnotatorStore(tmp_path, base_url="http://mirror.example/files/")
    assert mirror.url(DEPTH_ANYTHING_FILE) == "http://mirror.example/files/depth_anything_vitl14.pth"


def test_a_download_comes_from_the_files_own_url_only_when_allowed(
    tmp_path: Path, file_server: tuple[str, Path, list[str]]
) -> None:
    base_url, served, seen = file_server
    write_depth_anything_file(served / "elsewhere" / DEPTH_ANYTHING_V2_FILE, seed=4)
    urls = {DEPTH_ANYTHING_V2_FILE: f"{base_url}/elsewhere/{DEPTH_ANYTHING_V2_FILE}"}
    root = tmp_path / "annotators"
    with pytest.raises(AnnotatorWeightsMissing, match=r"/elsewhere/depth_anything_v2_vitl\.safetensors"):
        runner(root, urls=urls).run("depth_anything_v2", picture(), resolution=RES)
    assert seen == []  # nothing fetched without the opt-in
    preprocessors = runner(root, download=True, urls=urls)
    assert preprocessors.run("depth_anything_v2", picture(), resolution=RES).image.size == MAP_SIZE
    assert seen == [f"/elsewhere/{DEPTH_ANYTHING_V2_FILE}"]
    assert (root / DEPTH_ANYTHING_V2_FILE).is_file()
