"""ControlNet preprocessors on CPU: every module on a small picture, the annotator store, downloads.

Modules with weights run through the real loaders: each test's annotators folder holds only the files the
module's table entry names, written with random weights in the real file layout
(``tests/fixtures/annotator_files.py``), and the store never downloads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.fixtures.annotator_files import write_annotator_file
from webui.domain.controlnet_modules import PREPROCESSORS, resolve_module
from webui.runtime.controlnet.preprocessors import (
    LINKS_DIR,
    AnnotatorLoadError,
    AnnotatorStore,
    AnnotatorWeightsMissing,
    DetectedMap,
    Preprocessors,
    UnknownPreprocessorError,
    _require_complete,
    encode_people,
)

ROOT = Path(__file__).resolve().parents[2]
SIZE = (64, 48)  # width, height of the test picture
RES = 64  # processing resolution for the network modules: short side 48 -> 64, so maps are 85x64
MAP_SIZE = (85, 64)
CHEAP_MODULES = tuple(info.name for info in PREPROCESSORS if not info.needs_weights)
# the seg_* modules (with a weight_folder) are tested in test_segmentation.py; LaMa, which fills a mask rather
# than drawing a map, in test_lama.py
NETWORK_MODULES = [
    info.name
    for info in PREPROCESSORS
    if info.needs_weights
    and info.name not in ("depth_zoe", "inpaint_only+lama")
    and info.weight_folder is None
]


def picture() -> Image.Image:
    """White page, a red filled square, a black ring, a faint grey bar (low contrast)."""
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((6, 8, 24, 26), fill=(220, 30, 30))
    draw.ellipse((32, 10, 56, 34), outline="black", width=2)
    draw.rectangle((8, 36, 56, 42), fill=(236, 236, 236))
    return image


def other_picture() -> Image.Image:
    image = Image.new("RGB", SIZE, (20, 40, 200))
    draw = ImageDraw.Draw(image)
    draw.polygon([(5, 44), (32, 4), (60, 44)], fill=(250, 250, 90))
    return image


def pixels(result: DetectedMap) -> np.ndarray:
    assert result.image.mode == "RGB"
    return np.asarray(result.image)


@pytest.fixture(scope="module")
def annotator_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """Builds each annotator file once for this module, on first use; ~1.6 GB in all, deleted after."""
    folder = tmp_path_factory.mktemp("annotator-source")

    def get(filename: str) -> Path:
        path = folder / filename
        return path if path.is_file() else write_annotator_file(folder, filename)

    yield get
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def runner_for(tmp_path: Path, annotator_source: Callable[[str], Path]) -> Callable[[str], Preprocessors]:
    """A ``Preprocessors`` whose annotators folder holds exactly the module's ``weight_files``."""

    def make(module: str) -> Preprocessors:
        root = tmp_path / f"annotators-{module}"
        root.mkdir()
        for filename in resolve_module(module).weight_files:
            os.link(annotator_source(filename), root / filename)
        return Preprocessors(AnnotatorStore(root, allow_download=False))

    return make


@pytest.fixture
def cheap(tmp_path: Path) -> Preprocessors:
    return Preprocessors(AnnotatorStore(tmp_path / "empty", allow_download=False))


# -- modules without weights --------------------------------------------------------------------------------


def test_none_returns_the_picture_unchanged_as_rgb(cheap: Preprocessors) -> None:
    source = picture()
    result = cheap.run("none", source)
    assert result.module == "none" and result.poses is None and result.pose_json is None
    assert np.array_equal(pixels(result), np.asarray(source))
    rgba = source.convert("RGBA")
    assert np.array_equal(pixels(cheap.run("none", rgba)), np.asarray(source))
    gray = source.convert("L")
    assert np.array_equal(pixels(cheap.run("none", gray))[:, :, 0], np.asarray(gray))


def test_invert_is_exact(cheap: Preprocessors) -> None:
    result = cheap.run("invert (from white bg & black line)", picture())
    assert result.module == "invert"
    assert np.array_equal(pixels(result), 255 - np.asarray(picture()))


def test_canny_finds_the_drawn_edges_and_its_thresholds_matter(cheap: Preprocessors) -> None:
    result = cheap.run("canny", picture(), resolution=RES)
    edges = pixels(result)
    assert result.image.size == MAP_SIZE
    assert set(np.unique(edges)) == {0, 255}
    assert np.array_equal(edges[:, :, 0], edges[:, :, 2])
    scale = MAP_SIZE[1] / SIZE[1]
    square = edges[
        round(8 * scale) - 2 : round(26 * scale) + 3, round(6 * scale) - 2 : round(24 * scale) + 3, 0
    ]
    assert square.mean() > 20  # the red square's outline
    assert edges[: round(6 * scale), :, 0].max() == 0  # blank page above it
    bar_rows = slice(round(35 * scale), round(44 * scale))
    assert edges[bar_rows].max() == 0  # the faint bar is below the default thresholds (100/200)
    low = pixels(cheap.run("canny", picture(), resolution=RES, threshold_a=5, threshold_b=10))
    assert low[bar_rows].max() == 255  # ...and found with low ones
    assert (low > 0).sum() > (edges > 0).sum()


def test_resolution_sets_the_short_side_and_out_of_range_means_default(cheap: Preprocessors) -> None:
    assert cheap.run("canny", picture(), resolution=128).image.size == (171, 128)
    assert cheap.run("canny", picture()).image.size == (683, 512)
    assert cheap.run("canny", picture(), resolution=10).image.size == (683, 512)
    tall = picture().transpose(Image.Transpose.ROTATE_90)
    assert cheap.run("canny", tall, resolution=RES).image.size == (64, 85)
    assert cheap.run("lineart_standard", picture(), resolution=100).image.size == (133, 100)


def test_scribble_xdog_draws_the_dark_lines_and_its_threshold_matters(cheap: Preprocessors) -> None:
    lines = pixels(cheap.run("scribble_xdog", picture(), resolution=RES))
    assert lines.shape[:2] == (MAP_SIZE[1], MAP_SIZE[0])
    assert set(np.unique(lines)) <= {0, 255}
    ring = lines[13:46, 42:75, 0]
    assert ring.mean() > 30
    assert lines[:5, :, 0].max() == 0
    few = pixels(cheap.run("scribble_xdog", picture(), resolution=RES, threshold_a=64))
    many = pixels(cheap.run("scribble_xdog", picture(), resolution=RES, threshold_a=1))
    assert (few > 0).sum() < (lines > 0).sum() < (many > 0).sum()


def test_lineart_standard_marks_dark_strokes_on_a_light_page(cheap: Preprocessors) -> None:
    result = cheap.run("lineart_standard (from white bg & black line)", picture(), resolution=RES)
    lines = pixels(result)
    assert result.module == "lineart_standard"
    assert result.image.size == MAP_SIZE
    assert lines[:5].max() == 0  # plain page
    assert lines[13:46, 42:75, 0].max() > 100  # the black ring
    blank = pixels(cheap.run("lineart_standard", Image.new("RGB", SIZE, "white"), resolution=RES))
    assert blank.max() == 0


def test_shuffle_moves_content_reproducibly_with_a_seed(cheap: Preprocessors) -> None:
    first = pixels(cheap.run("shuffle", picture(), resolution=RES, seed=7))
    again = pixels(cheap.run("shuffle", picture(), resolution=RES, seed=7))
    other = pixels(cheap.run("shuffle", picture(), resolution=RES, seed=8))
    assert first.shape[:2] == (MAP_SIZE[1], MAP_SIZE[0])
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    plain = pixels(cheap.run("canny", picture(), resolution=RES))
    assert not np.array_equal(first, plain)
    blue = pixels(cheap.run("shuffle", Image.new("RGB", SIZE, (10, 20, 200)), resolution=RES, seed=1))
    assert np.array_equal(np.unique(blue.reshape(-1, 3), axis=0), [[10, 20, 200]])  # colours kept


def test_tile_resample_downsamples_by_its_rate(cheap: Preprocessors) -> None:
    source = picture()
    assert np.array_equal(pixels(cheap.run("tile_resample", source)), np.asarray(source))
    assert cheap.run("tile_resample", source, threshold_a=2.0).image.size == (32, 24)
    assert cheap.run("tile_resample", source, threshold_a=4.0).image.size == (16, 12)
    assert cheap.run("tile_resample", source, threshold_a=9.0).image.size == SIZE  # out of range: default
    assert cheap.run("tile_resample", source, resolution=128).image.size == SIZE  # takes no resolution


def test_cheap_modules_need_no_weights_and_no_controlnet_aux(tmp_path: Path) -> None:
    """The no-weight modules run in a fresh process without importing controlnet-aux."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from PIL import Image\n"
        "from webui.runtime.controlnet.preprocessors import AnnotatorStore, Preprocessors\n"
        "assert 'controlnet_aux' not in sys.modules\n"
        f"p = Preprocessors(AnnotatorStore(Path({str(tmp_path)!r}), allow_download=False))\n"
        f"for name in {CHEAP_MODULES!r}:\n"
        "    p.run(name, Image.new('RGB', (64, 48)), resolution=64)\n"
        "print('controlnet_aux' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_unknown_module_is_a_clear_error(cheap: Preprocessors) -> None:
    with pytest.raises(UnknownPreprocessorError, match="Valid names: none, invert, canny"):
        cheap.run("seg_anime_face", picture())


# -- modules with weights -----------------------------------------------------------------------------------


@pytest.mark.parametrize("module", NETWORK_MODULES)
def test_network_module_runs_from_only_its_own_weight_files(
    module: str, runner_for: Callable[[str], Preprocessors]
) -> None:
    runner = runner_for(module)
    result = runner.run(module, picture(), resolution=RES)
    first = pixels(result)
    assert result.module == module
    assert result.image.size == MAP_SIZE  # aspect ratio kept, at the processing resolution
    assert first.dtype == np.uint8
    assert np.array_equal(first, pixels(runner.run(module, picture(), resolution=RES)))  # deterministic
    if module.startswith(("openpose", "dw_openpose")):
        return  # random weights find nobody; see test_openpose_* (DWPose: test_dwpose.py)
    assert first.min() < first.max(), "the map is flat"
    changed = pixels(runner.run(module, other_picture(), resolution=RES))
    if module != "mlsd":  # random line detectors may find the same nothing in both pictures
        assert not np.array_equal(first, changed), "the map ignores the picture"


@pytest.mark.parametrize(
    ("network", "modules"),
    [
        ("hed", ("softedge_hed", "softedge_hedsafe", "scribble_hed")),
        ("pidinet", ("pidinet", "softedge_pidisafe", "scribble_pidinet")),
    ],
)
def test_soft_edge_variants_safe_steps_and_binary_scribbles(
    runner_for: Callable[[str], Preprocessors], network: str, modules: tuple[str, str, str]
) -> None:
    soft_module, safe_module, scribble_module = modules
    runner = runner_for(f"softedge_{network}")
    soft = pixels(runner.run(soft_module, picture(), resolution=RES))
    safe = pixels(runner.run(safe_module, picture(), resolution=RES))
    scribble = pixels(runner.run(scribble_module, picture(), resolution=RES))
    assert len(np.unique(soft)) > 20
    assert set(np.unique(safe)) <= {0, 127, 255}
    assert set(np.unique(scribble)) <= {0, 255}
    assert runner.loaded() == [network]  # the three modules share one network


def test_lineart_realistic_and_coarse_use_different_files(
    runner_for: Callable[[str], Preprocessors], tmp_path: Path, annotator_source: Callable[[str], Path]
) -> None:
    both = tmp_path / "both"
    both.mkdir()
    for name in ("sk_model.pth", "sk_model2.pth"):
        os.link(annotator_source(name), both / name)
    runner = Preprocessors(AnnotatorStore(both, allow_download=False))
    fine = pixels(runner.run("lineart", picture(), resolution=RES))
    coarse = pixels(runner.run("lineart_coarse", picture(), resolution=RES))
    assert not np.array_equal(fine, coarse)
    assert np.array_equal(
        fine, pixels(runner_for("lineart_realistic").run("lineart_realistic", picture(), resolution=RES))
    )


def test_mlsd_value_threshold_matters(runner_for: Callable[[str], Preprocessors]) -> None:
    runner = runner_for("mlsd")
    lines = pixels(runner.run("mlsd", picture(), resolution=RES))
    assert set(np.unique(lines)) == {0, 255}
    none = pixels(runner.run("mlsd", picture(), resolution=RES, threshold_a=2.0))  # scores are <= 1
    assert none.max() == 0
    short = pixels(runner.run("mlsd", picture(), resolution=RES, threshold_b=20.0))
    assert (short > 0).sum() < (lines > 0).sum()


@pytest.mark.parametrize(
    "module", ["openpose", "openpose_hand", "openpose_face", "openpose_faceonly", "openpose_full"]
)
def test_openpose_variants_return_pose_lists(module: str, runner_for: Callable[[str], Preprocessors]) -> None:
    runner = runner_for(module)
    result = runner.run(module, picture(), resolution=RES)
    assert result.poses == []  # random weights find nobody; the canvas stays black
    assert pixels(result).max() == 0
    assert result.pose_json == {"people": [], "canvas_width": MAP_SIZE[0], "canvas_height": MAP_SIZE[1]}
    expected = {"openpose_body"} | ({"openpose_hand"} if "hand" in module or "full" in module else set())
    expected |= {"openpose_face"} if "face" in module or "full" in module else set()
    assert set(runner.loaded()) == expected


def test_openpose_people_are_encoded_as_the_extensions_pose_json() -> None:
    from controlnet_aux.open_pose import PoseResult
    from controlnet_aux.open_pose.body import BodyResult, Keypoint

    body = BodyResult(keypoints=[Keypoint(0.5, 0.25), None], total_score=3.0, total_parts=1)
    pose = PoseResult(body, [Keypoint(0.1, 0.2)], None, [Keypoint(0.25, 0.5), None])
    people = encode_people([pose], scale_x=2.0, scale_y=1.0)
    assert people == [
        {
            "pose_keypoints_2d": [1.0, 0.25, 1.0, 0.0, 0.0, 0.0],
            "face_keypoints_2d": [0.5, 0.5, 1.0, 0.0, 0.0, 0.0],
            "hand_left_keypoints_2d": [0.2, 0.2, 1.0],
            "hand_right_keypoints_2d": None,
        }
    ]
    detected = DetectedMap(Image.new("RGB", (30, 20)), "openpose_full", people)
    assert detected.pose_json == {"people": people, "canvas_width": 30, "canvas_height": 20}


@pytest.mark.slow
def test_depth_zoe_runs_from_its_file(tmp_path: Path) -> None:
    """ZoeDepth (BEiT-L backbone, ~1.3 GB of random weights): built, saved, loaded and run once."""
    root = tmp_path / "annotators"
    write_annotator_file(root, "ZoeD_M12_N.pt")
    runner = Preprocessors(AnnotatorStore(root, allow_download=False))
    depth = pixels(runner.run("depth_zoe", picture(), resolution=RES))
    assert depth.shape[:2] == (MAP_SIZE[1], MAP_SIZE[0])
    assert depth.min() < depth.max()


# -- loading, caching, errors -------------------------------------------------------------------------------


def test_cache_keeps_the_most_recently_used_networks(
    tmp_path: Path, annotator_source: Callable[[str], Path]
) -> None:
    root = tmp_path / "annotators"
    root.mkdir()
    for name in ("ControlNetHED.pth", "table5_pidinet.pth", "sk_model.pth", "mlsd_large_512_fp32.pth"):
        os.link(annotator_source(name), root / name)
    runner = Preprocessors(AnnotatorStore(root, allow_download=False), cache_size=3)
    for module in ("softedge_hed", "softedge_pidinet", "lineart_realistic", "softedge_hed", "mlsd"):
        runner.run(module, picture(), resolution=RES)
    assert runner.loaded() == ["lineart_realistic", "hed", "mlsd"]
    runner.unload()
    assert runner.loaded() == []
    with pytest.raises(ValueError, match="cache_size"):
        Preprocessors(AnnotatorStore(root), cache_size=2)


def test_the_extensions_folder_layout_is_found(
    tmp_path: Path, annotator_source: Callable[[str], Path]
) -> None:
    root = tmp_path / "annotators"
    (root / "openpose").mkdir(parents=True)
    (root / "downloads" / "hed").mkdir(parents=True)
    os.link(annotator_source("body_pose_model.pth"), root / "openpose" / "body_pose_model.pth")
    os.link(annotator_source("ControlNetHED.pth"), root / "downloads" / "hed" / "ControlNetHED.pth")
    store = AnnotatorStore(root, allow_download=False)
    assert store.resolve("body_pose_model.pth") == root / "openpose" / "body_pose_model.pth"
    assert store.resolve("ControlNetHED.pth") == root / "downloads" / "hed" / "ControlNetHED.pth"
    runner = Preprocessors(store)
    assert runner.run("openpose", picture(), resolution=RES).poses == []
    assert runner.run("hed", picture(), resolution=RES).image.size == MAP_SIZE


def test_prepare_dir_links_files_from_different_folders(tmp_path: Path) -> None:
    root = tmp_path / "annotators"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    (root / "a" / "one.pth").write_bytes(b"1")
    (root / "b" / "two.pth").write_bytes(b"22")
    store = AnnotatorStore(root, allow_download=False)
    assert store.prepare_dir(["one.pth"]) == root / "a"
    folder = store.prepare_dir(["one.pth", "two.pth"])
    assert folder.parent == root / LINKS_DIR
    assert (folder / "one.pth").read_bytes() == b"1"
    assert (folder / "two.pth").read_bytes() == b"22"
    assert store.prepare_dir(["two.pth", "one.pth"]) == folder  # stable, reused
    assert store.find("one.pth") == root / "a" / "one.pth"  # links are never found as sources


def test_missing_weights_with_downloads_off_name_the_file_folder_and_url(tmp_path: Path) -> None:
    root = tmp_path / "annotators"
    runner = Preprocessors(AnnotatorStore(root, allow_download=False))
    with pytest.raises(AnnotatorWeightsMissing) as caught:
        runner.run("openpose_full", picture())
    error = caught.value
    message = str(error)
    assert error.filename == "body_pose_model.pth"
    assert "body_pose_model.pth" in message
    assert str(root) in message
    assert "https://huggingface.co/lllyasviel/Annotators/resolve/main/body_pose_model.pth" in message
    assert "downloads are off" in message
    assert runner.loaded() == []


def test_empty_and_partial_files_do_not_count(tmp_path: Path) -> None:
    root = tmp_path / "annotators"
    (root / "hed").mkdir(parents=True)
    (root / "ControlNetHED.pth").write_bytes(b"")
    (root / "ControlNetHED.pth.part").write_bytes(b"half a file")
    (root / "hed" / "ControlNetHED.pth").write_bytes(b"")
    store = AnnotatorStore(root, allow_download=False)
    assert store.find("ControlNetHED.pth") is None
    with pytest.raises(AnnotatorWeightsMissing):
        store.resolve("ControlNetHED.pth")
    with pytest.raises(ValueError):
        store.resolve("../escape.pth")


def test_a_corrupt_file_is_a_load_error_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "annotators"
    root.mkdir()
    (root / "sk_model.pth").write_bytes(b"not a checkpoint at all")
    runner = Preprocessors(AnnotatorStore(root, allow_download=False))
    with pytest.raises(AnnotatorLoadError, match=r"sk_model\.pth"):
        runner.run("lineart_realistic", picture(), resolution=RES)
    assert runner.loaded() == []


def test_a_file_for_another_network_is_a_load_error(
    tmp_path: Path, annotator_source: Callable[[str], Path]
) -> None:
    root = tmp_path / "annotators"
    root.mkdir()
    os.link(annotator_source("mlsd_large_512_fp32.pth"), root / "ControlNetHED.pth")
    runner = Preprocessors(AnnotatorStore(root, allow_download=False))
    with pytest.raises(AnnotatorLoadError, match=r"ControlNetHED\.pth"):
        runner.run("softedge_hed", picture(), resolution=RES)


def test_non_strict_loads_are_checked_for_missing_weights(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 1, 1))
    full = tmp_path / "full.pt"
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, full)
    _require_complete(net, full, "model")
    partial = tmp_path / "partial.pt"
    torch.save({"model": {k: v for k, v in net.state_dict().items() if not k.startswith("1.")}}, partial)
    with pytest.raises(AnnotatorLoadError, match="2 weights are missing"):
        _require_complete(net, partial, "model")


# -- downloads ----------------------------------------------------------------------------------------------


def test_download_once_with_progress(tmp_path: Path, file_server: tuple[str, Path, list[str]]) -> None:
    base_url, served, seen = file_server
    payload = os.urandom(3 * (1 << 20) + 123)
    (served / "netG.pth").write_bytes(payload)
    root = tmp_path / "annotators"
    reports: list[tuple[str, float]] = []
    store = AnnotatorStore(root, base_url=base_url + "/", progress=lambda m, f: reports.append((m, f)))
    (root).mkdir()
    (root / "netG.pth.part").write_bytes(b"stale leftover")
    path = store.resolve("netG.pth")
    assert path == root / "netG.pth"
    assert path.read_bytes() == payload
    assert not (root / "netG.pth.part").exists()
    assert seen == ["/netG.pth"]
    fractions = [fraction for _, fraction in reports]
    assert {message for message, _ in reports} == {"Downloading netG.pth"}
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len(fractions) >= 4 and fractions == sorted(fractions)
    assert store.resolve("netG.pth") == path
    assert seen == ["/netG.pth"]  # not fetched again


def test_a_server_error_is_missing_weights_with_the_reason(
    tmp_path: Path, file_server: tuple[str, Path, list[str]]
) -> None:
    base_url, _, _ = file_server
    root = tmp_path / "annotators"
    store = AnnotatorStore(root, base_url=base_url)
    with pytest.raises(AnnotatorWeightsMissing) as caught:
        store.resolve("scannet.pt")
    message = str(caught.value)
    assert "404" in message and "scannet.pt" in message and str(root) in message
    assert f"{base_url}/scannet.pt" in message
    assert not list(root.iterdir())  # no leftover .part


def test_an_unreachable_server_is_missing_weights(tmp_path: Path) -> None:
    store = AnnotatorStore(tmp_path / "annotators", base_url="http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(
        AnnotatorWeightsMissing, match=r"download from http://127\.0\.0\.1:9/facenet\.pth failed"
    ):
        store.resolve("facenet.pth")


def test_a_download_feeds_the_real_loader(
    tmp_path: Path, file_server: tuple[str, Path, list[str]], annotator_source: Callable[[str], Path]
) -> None:
    base_url, served, seen = file_server
    os.link(annotator_source("table5_pidinet.pth"), served / "table5_pidinet.pth")
    runner = Preprocessors(AnnotatorStore(tmp_path / "annotators", base_url=base_url))
    result = runner.run("scribble_pidinet", picture(), resolution=RES)
    assert result.image.size == MAP_SIZE
    assert seen == ["/table5_pidinet.pth"]


def test_importing_the_runner_imports_no_controlnet_aux() -> None:
    code = (
        "import sys\n"
        "import webui.runtime.controlnet.preprocessors\n"
        "print(sorted(m for m in ('controlnet_aux', 'huggingface_hub', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
