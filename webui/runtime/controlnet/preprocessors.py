"""ControlNet preprocessors ("annotators"): turn a reference picture into the map a ControlNet expects.

The table of modules, their sliders and weight files is :mod:`webui.domain.controlnet_modules`; this
module runs them. Cheap modules (``none``, ``invert``, ``canny``, ``scribble_xdog``, ``lineart_standard``,
``shuffle``, ``tile_resample``) are written here with OpenCV and numpy. The others run controlnet-aux's
networks, imported only when such a module first runs (the package imports all its detectors and takes
seconds), and loaded from local files through each detector's own ``from_pretrained(folder, filename=...)``
(or, for OpenPose, its ``Body`` / ``Hand`` / ``Face`` loaders, so each variant loads only the networks it
uses). ``depth_anything`` / ``depth_anything_v2`` run transformers' Depth Anything, loaded from the published
files by :mod:`webui.runtime.controlnet.depth_anything`. The ``dw_openpose*`` modules run DWPose's ONNX or
TorchScript files (:mod:`webui.runtime.controlnet.dwpose`) and draw like OpenPose. The ``seg_*`` modules run
a transformers segmentation model (:mod:`webui.runtime.controlnet.segmentation`) from a model folder under
``models/annotators`` or, for OneFormer, the extension's detectron2 file. Nothing here calls huggingface_hub.

Weights come from an :class:`AnnotatorStore`: ``models/annotators`` first (also the extension's layout,
``models/annotators/openpose/body_pose_model.pth``), else a download from ``lllyasviel/Annotators`` (or the
file's own URL in ``ANNOTATOR_URLS``) when allowed, else :class:`AnnotatorWeightsMissing` saying which file
to put where.

Sizes follow the extension: a module with a resolution scales the picture so its short side is the
processing resolution, pads it at the bottom/right (edge pixels) to a multiple of 64, runs, and crops the
padding off again, so the map keeps the picture's aspect ratio at the processing resolution; the caller
fits it to the generation size. ``none``, ``invert`` and ``tile_resample`` work at the input's own size.
"""

from __future__ import annotations

import gc
import glob
import hashlib
import logging
import math
import os
import shutil
import threading
import urllib.error
import urllib.request
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from webui.domain.controlnet_modules import (
    ANNOTATOR_URLS,
    ANNOTATORS_BASE_URL,
    DEPTH_ANYTHING_FILES,
    DEPTH_ANYTHING_FOLDERS,
    DWPOSE_FILES,
    HED_FILE,
    INPAINT_MODULES,
    IP_ADAPTER_MODULES,
    LAMA_FILE,
    LAMA_MODULE,
    LINEART_ANIME_FILE,
    LINEART_COARSE_FILE,
    LINEART_FILE,
    MIDAS_FILE,
    MLSD_FILE,
    NORMAL_BAE_FILE,
    OPENPOSE_BODY,
    OPENPOSE_FACE,
    OPENPOSE_HAND,
    PIDINET_FILE,
    SEG_ADE20K_ONEFORMER_DIR,
    SEG_ADE20K_ONEFORMER_FILE,
    SEG_ADE20K_UPERNET_DIR,
    SEG_COCO_ONEFORMER_DIR,
    SEG_COCO_ONEFORMER_FILE,
    ZOE_FILE,
    PreprocessorInfo,
    UnknownPreprocessorError,
    resolve_module,
)
from webui.runtime.controlnet.segmentation import (
    ADE20K,
    COCO_PANOPTIC,
    SegDataset,
    SegmentationModelError,
    has_weights,
    load_segmenter,
    load_segmenter_file,
)

__all__ = [
    "AnnotatorLoadError",
    "AnnotatorStore",
    "AnnotatorWeightsMissing",
    "DetectedMap",
    "Preprocessors",
    "UnknownPreprocessorError",
    "encode_people",
]

log = logging.getLogger(__name__)

LINKS_DIR = ".easel-links"  # per-file-set folders of links, for loaders that want one folder
PAD_MULTIPLE = 64  # the extension pads the scaled picture to a multiple of this before detecting
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 30.0
SHUFFLE_CELL = 256  # size of the random flow field's cells, in pixels (the extension's default)
XDOG_SIGMAS = (0.5, 5.0)  # the two Gaussian blurs whose difference marks the lines
LINEART_STANDARD_SIGMA = 6.0
TILE_RESAMPLE_MIN_RATE = 1.1  # below this, tile_resample returns the picture unchanged (as the extension)

Progress = Callable[[str, float], None]


class AnnotatorWeightsMissing(RuntimeError):
    """An annotator weight file is not on disk and could not be downloaded; the message says what to do.

    ``message`` replaces the standard wording (for weights that are a model folder rather than one file).
    """

    def __init__(
        self, filename: str, folder: Path, url: str, reason: str, *, message: str | None = None
    ) -> None:
        self.filename = filename
        self.folder = folder
        self.url = url
        self.reason = reason
        super().__init__(
            message
            or f"ControlNet annotator weights {filename} are missing. Put the file into {folder} "
            f"(or a subfolder of it); get it from {url}. {reason}"
        )


class AnnotatorLoadError(RuntimeError):
    """An annotator weight file is present but cannot be loaded (corrupt, incomplete, another network)."""


# -- where the weights live ---------------------------------------------------------------------------------


class AnnotatorStore:
    """The annotator weight files in ``root`` (``models/annotators``), downloading missing ones if allowed.

    ``resolve`` looks in ``root``, then one and two folder levels below it (the extension keeps e.g.
    ``openpose/body_pose_model.pth``); empty files and ``.part`` leftovers do not count. A missing file is
    downloaded, when ``allow_download`` is set, from ``base_url/<file>`` into ``root/<file>.part`` and renamed
    into place once complete, reporting ``progress("Downloading <file>", fraction)``. Files published
    elsewhere come from their own URL in ``urls`` (by default ``ANNOTATOR_URLS``, unless ``base_url`` is
    changed: another base URL is taken as a mirror of every file).
    """

    def __init__(
        self,
        root: Path,
        *,
        allow_download: bool = True,
        base_url: str = ANNOTATORS_BASE_URL,
        urls: dict[str, str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.root = Path(root)
        self.allow_download = allow_download
        self.base_url = base_url.rstrip("/")
        if urls is None:
            urls = ANNOTATOR_URLS if self.base_url == ANNOTATORS_BASE_URL else {}
        self.urls = dict(urls)
        self.progress = progress
        self._lock = threading.Lock()

    def url(self, filename: str) -> str:
        return self.urls.get(filename) or f"{self.base_url}/{filename}"

    def find(self, filename: str) -> Path | None:
        """The local copy of ``filename``, or None."""
        candidates = [self.root / filename]
        if self.root.is_dir():
            for depth in ("*", "*/*"):
                candidates += sorted(
                    path
                    for path in self.root.glob(f"{depth}/{glob.escape(filename)}")
                    if not any(part.startswith(".") for part in path.relative_to(self.root).parts[:-1])
                )
        for path in candidates:
            try:
                if path.is_file() and path.stat().st_size > 0:
                    return path
            except OSError:
                continue
        return None

    def find_folder(self, name: str) -> Path | None:
        """The model folder ``name`` (one holding a ``config.json``) in ``root`` or up to two levels below."""
        candidates = [self.root / name]
        if self.root.is_dir():
            for depth in ("*", "*/*"):
                candidates += sorted(
                    path
                    for path in self.root.glob(f"{depth}/{glob.escape(name)}")
                    if not any(part.startswith(".") for part in path.relative_to(self.root).parts)
                )
        return next((path for path in candidates if (path / "config.json").is_file()), None)

    def resolve(self, filename: str) -> Path:
        """The path of ``filename`` on disk, downloading it first when missing and allowed."""
        if Path(filename).name != filename or filename.endswith(".part"):
            raise ValueError(f"not an annotator file name: {filename!r}")
        with self._lock:
            found = self.find(filename)
            if found is not None:
                return found
            if not self.allow_download:
                raise AnnotatorWeightsMissing(
                    filename,
                    self.root,
                    self.url(filename),
                    "Automatic downloads are off.",
                )
            return self._download(filename)

    def _download(self, filename: str) -> Path:
        url = self.url(filename)
        self.root.mkdir(parents=True, exist_ok=True)
        part = self.root / f"{filename}.part"
        target = self.root / filename
        message = f"Downloading {filename}"
        log.info("Downloading annotator weights %s from %s", filename, url)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "Easel"})
            with (
                urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response,
                part.open("wb") as out,
            ):
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                self._report(message, 0.0)
                while chunk := response.read(DOWNLOAD_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if total:
                        self._report(message, min(done / total, 0.999))
            if total and done != total:
                raise OSError(f"the connection closed after {done} of {total} bytes")
            if done == 0:
                raise OSError("the server sent an empty file")
            os.replace(part, target)
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            part.unlink(missing_ok=True)
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(exc, urllib.error.HTTPError):
                reason = f"HTTP {exc.code} {exc.reason}"
            raise AnnotatorWeightsMissing(
                filename, self.root, url, f"The download from {url} failed: {reason}."
            ) from exc
        self._report(message, 1.0)
        return target

    def _report(self, message: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(message, fraction)

    def prepare_dir(self, files: Iterable[str]) -> Path:
        """A folder holding every one of ``files`` under its own name (resolving each first).

        The folder the files are in when they are all in one; otherwise a folder of links under
        ``root/.easel-links`` (copies where the filesystem has no links).
        """
        names = sorted(set(files))
        paths = {name: self.resolve(name) for name in names}
        parents = {path.parent for path in paths.values()}
        if len(parents) == 1:
            return parents.pop()
        key = hashlib.sha256("\n".join(str(paths[name]) for name in names).encode()).hexdigest()[:16]
        folder = self.root / LINKS_DIR / key
        folder.mkdir(parents=True, exist_ok=True)
        for name, source in paths.items():
            link = folder / name
            if link.is_symlink() or link.exists():
                if link.resolve() == source.resolve():
                    continue
                link.unlink()
            try:
                link.symlink_to(source.resolve())
            except OSError:
                try:
                    os.link(source, link)
                except OSError:
                    shutil.copy2(source, link)
        return folder


# -- results ------------------------------------------------------------------------------------------------


@dataclass
class DetectedMap:
    """A preprocessor's output: the map (RGB), the module that made it and, for OpenPose, the people found.

    ``poses`` holds one OpenPose-JSON person per detected body (``pose_keypoints_2d``,
    ``face_keypoints_2d``, ``hand_left_keypoints_2d``, ``hand_right_keypoints_2d``: flat ``x, y, confidence``
    triples, coordinates as fractions of the map's width and height, ``0, 0, 0`` for a missing point,
    ``None`` for a part not detected), as the extension's pose JSON does; :attr:`pose_json` is the whole
    per-image document the extension's ``/controlnet/detect`` returns in ``poses``.
    """

    image: Image.Image
    module: str
    poses: list[dict[str, Any]] | None = None

    @property
    def pose_json(self) -> dict[str, Any] | None:
        if self.poses is None:
            return None
        return {"people": self.poses, "canvas_width": self.image.width, "canvas_height": self.image.height}


# -- geometry shared by the modules -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scaled:
    """A picture scaled to the processing resolution and padded to a multiple of 64 (bottom/right)."""

    padded: np.ndarray  # HxWx3 uint8, H and W multiples of 64
    height: int  # the scaled picture's size inside ``padded``
    width: int

    def crop(self, result: np.ndarray) -> np.ndarray:
        if result.shape[:2] != self.padded.shape[:2]:
            raise RuntimeError(
                f"preprocessor returned {result.shape[1]}x{result.shape[0]} for a "
                f"{self.padded.shape[1]}x{self.padded.shape[0]} input"
            )
        return np.ascontiguousarray(result[: self.height, : self.width])

    @property
    def short_side(self) -> int:
        return min(self.padded.shape[:2])


def _scale_and_pad(rgb: np.ndarray, resolution: int) -> _Scaled:
    height, width = rgb.shape[:2]
    factor = resolution / min(height, width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    if (new_h, new_w) != (height, width):
        interpolation = cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
    pad_h, pad_w = -new_h % PAD_MULTIPLE, -new_w % PAD_MULTIPLE
    padded = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return _Scaled(np.ascontiguousarray(padded), new_h, new_w)


def _rgb3(array: np.ndarray) -> np.ndarray:
    """An HxW or HxWx1/3 uint8 map as HxWx3."""
    if array.dtype != np.uint8:
        raise RuntimeError(f"preprocessor returned {array.dtype} instead of uint8")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


# -- the cheap modules --------------------------------------------------------------------------------------


def _canny(scaled: _Scaled, low: float, high: float) -> np.ndarray:
    return _rgb3(cv2.Canny(scaled.padded, int(low), int(high)))


def _scribble_xdog(scaled: _Scaled, threshold: float) -> np.ndarray:
    """White where the picture is darker than its surroundings in every channel by more than ``threshold/2``.

    Darkness is a difference of Gaussians: the coarse blur (the surroundings) minus the fine blur.
    """
    image = scaled.padded.astype(np.float32)
    fine = cv2.GaussianBlur(image, (0, 0), XDOG_SIGMAS[0])
    coarse = cv2.GaussianBlur(image, (0, 0), XDOG_SIGMAS[1])
    darkening = np.clip(np.min(coarse - fine, axis=2), 0, 255).astype(np.uint8).astype(np.float32)
    lines = np.where(2 * darkening > threshold, 255, 0).astype(np.uint8)
    return _rgb3(lines)


def _lineart_standard(scaled: _Scaled) -> np.ndarray:
    """Dark strokes on a light page: how much darker each pixel is than its blurred surroundings.

    Normalised so that a typical stroke (the median of the clearly dark pixels, at least 16 levels)
    maps to 127.
    """
    image = scaled.padded.astype(np.float32)
    surroundings = cv2.GaussianBlur(image, (0, 0), LINEART_STANDARD_SIGMA)
    darkness = np.clip(np.min(surroundings - image, axis=2), 0, 255)
    strokes = darkness[darkness > 8]
    typical = max(16.0, float(np.median(strokes))) if strokes.size else 16.0
    return _rgb3(np.clip(darkness / typical * 127, 0, 255).astype(np.uint8))


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """A smooth random field in [0, 1]: cubic interpolation of uniform noise on a ``cell``-pixel grid."""
    coarse = rng.uniform(0.0, 1.0, size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    fine = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    fine = fine[cell : cell + height, cell : cell + width]
    fine -= fine.min()
    return fine / max(float(fine.max()), 1e-6)


def _shuffle(rgb: np.ndarray, seed: int | None) -> np.ndarray:
    """The picture's content moved around by a smooth random flow field (colours and textures kept)."""
    rng = np.random.default_rng(seed)
    height, width = rgb.shape[:2]
    map_x = _smooth_noise(rng, height, width, SHUFFLE_CELL) * float(width - 1)
    map_y = _smooth_noise(rng, height, width, SHUFFLE_CELL) * float(height - 1)
    return cv2.remap(rgb, map_x, map_y, interpolation=cv2.INTER_LINEAR)


def _tile_resample(rgb: np.ndarray, rate: float) -> np.ndarray:
    if rate < TILE_RESAMPLE_MIN_RATE:
        return rgb.copy()
    height, width = rgb.shape[:2]
    size = (max(1, int(width / rate)), max(1, int(height / rate)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


# -- the networks -------------------------------------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence controlnet-aux's import-time and load-time warnings (optional extras, timm renames)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _import_controlnet_aux() -> None:
    with _quiet():
        import controlnet_aux  # noqa: F401


def _require_complete(model: torch.nn.Module, path: Path, key: str | None) -> None:
    """Fail when ``path`` lacks weights ``model`` has (for loaders that load non-strictly)."""
    try:
        stored = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        stored = torch.load(str(path), map_location="cpu", weights_only=True)
    if key is not None:
        stored = stored[key]
    names = {name.removeprefix("module.") for name in stored}
    missing = [
        name
        for name in model.state_dict()
        if name not in names and not name.endswith("relative_position_index")  # rebuilt at init
    ]
    if missing:
        raise AnnotatorLoadError(
            f"{path.name} does not hold the network this preprocessor needs: {len(missing)} weights are "
            f"missing (first: {', '.join(missing[:3])}). Replace the file with the one from "
            f"{ANNOTATORS_BASE_URL}/{path.name}."
        )


class _Component:
    """One loadable network: the weight files it reads and how to build it from a folder holding them.

    ``uses_aux``: the builder needs controlnet-aux (imported, with its warnings silenced, before it runs).
    """

    def __init__(
        self, files: tuple[str, ...], build: Callable[[AnnotatorStore], Any], *, uses_aux: bool = True
    ) -> None:
        self.files = files
        self.build = build
        self.uses_aux = uses_aux


def _body(store: AnnotatorStore) -> Any:
    from controlnet_aux.open_pose.body import Body

    return Body(str(store.resolve(OPENPOSE_BODY)))


def _hand(store: AnnotatorStore) -> Any:
    from controlnet_aux.open_pose.hand import Hand

    return Hand(str(store.resolve(OPENPOSE_HAND)))


def _face(store: AnnotatorStore) -> Any:
    from controlnet_aux.open_pose.face import Face

    return Face(str(store.resolve(OPENPOSE_FACE)))


def _hed(store: AnnotatorStore) -> Any:
    from controlnet_aux.hed import HEDdetector

    return HEDdetector.from_pretrained(str(store.prepare_dir([HED_FILE])), filename=HED_FILE)


def _pidinet(store: AnnotatorStore) -> Any:
    from controlnet_aux.pidi import PidiNetDetector

    return PidiNetDetector.from_pretrained(str(store.prepare_dir([PIDINET_FILE])), filename=PIDINET_FILE)


def _lineart(filename: str) -> Callable[[AnnotatorStore], Any]:
    def build(store: AnnotatorStore) -> Any:
        from controlnet_aux.lineart import LineartDetector

        # The loader always reads a fine and a coarse network; give it the one this module uses twice,
        # so lineart_realistic needs only sk_model.pth and lineart_coarse only sk_model2.pth.
        folder = str(store.prepare_dir([filename]))
        return LineartDetector.from_pretrained(folder, filename=filename, coarse_filename=filename)

    return build


def _lineart_anime(store: AnnotatorStore) -> Any:
    from controlnet_aux.lineart_anime import LineartAnimeDetector

    folder = str(store.prepare_dir([LINEART_ANIME_FILE]))
    return LineartAnimeDetector.from_pretrained(folder, filename=LINEART_ANIME_FILE)


def _mlsd(store: AnnotatorStore) -> Any:
    from controlnet_aux.mlsd import MLSDdetector

    return MLSDdetector.from_pretrained(str(store.prepare_dir([MLSD_FILE])), filename=MLSD_FILE)


def _normal_bae(store: AnnotatorStore) -> Any:
    from controlnet_aux.normalbae import NormalBaeDetector

    folder = str(store.prepare_dir([NORMAL_BAE_FILE]))
    return NormalBaeDetector.from_pretrained(folder, filename=NORMAL_BAE_FILE)


def _midas(store: AnnotatorStore) -> Any:
    from controlnet_aux.midas import MidasDetector

    folder = str(store.prepare_dir([MIDAS_FILE]))
    return MidasDetector.from_pretrained(folder, model_type="dpt_hybrid", filename=MIDAS_FILE)


def _zoe(store: AnnotatorStore) -> Any:
    from controlnet_aux.zoe import ZoeDetector

    folder = store.prepare_dir([ZOE_FILE])
    detector = ZoeDetector.from_pretrained(str(folder), model_type="zoedepth", filename=ZOE_FILE)
    # ZoeDepth loads non-strictly under timm >= 1.0; make sure nothing the network needs was skipped.
    _require_complete(detector.model, folder / ZOE_FILE, "model")
    return detector


@dataclass(frozen=True)
class _SegModel:
    """What a segmentation module loads: a transformers-format model folder, else the extension's file."""

    module: str  # the preprocessor that uses it
    folder: str  # under models/annotators
    dataset: SegDataset
    example: str  # a Hugging Face repository holding a fitting model
    file: str | None  # the extension's OneFormer file (lllyasviel/Annotators), read when there is no folder
    unreadable: str = ""  # for a module without ``file``: the extension's file and why it cannot be read


SEG_MODELS: dict[str, _SegModel] = {  # component name -> model
    SEG_ADE20K_ONEFORMER_DIR: _SegModel(
        "seg_ofade20k",
        SEG_ADE20K_ONEFORMER_DIR,
        ADE20K,
        "shi-labs/oneformer_ade20k_swin_large",
        SEG_ADE20K_ONEFORMER_FILE,
    ),
    SEG_COCO_ONEFORMER_DIR: _SegModel(
        "seg_ofcoco",
        SEG_COCO_ONEFORMER_DIR,
        COCO_PANOPTIC,
        "shi-labs/oneformer_coco_swin_large",
        SEG_COCO_ONEFORMER_FILE,
    ),
    SEG_ADE20K_UPERNET_DIR: _SegModel(
        "seg_ufade20k",
        SEG_ADE20K_UPERNET_DIR,
        ADE20K,
        "openmmlab/upernet-convnext-small",
        None,
        "The extension's upernet_global_small.pth cannot be loaded: its UniFormer backbone is not part of "
        "transformers.",
    ),
}
SEG_MODULES = {model.module: name for name, model in SEG_MODELS.items()}  # module -> component name


def _seg_missing(spec: _SegModel, store: AnnotatorStore, file_error: AnnotatorWeightsMissing | None) -> str:
    """What to put where for ``spec``'s module, when neither its folder nor its file is there."""
    folder = store.root / spec.folder
    model = (
        f"a semantic segmentation model trained on {spec.dataset.name} ({spec.dataset.num_classes} classes) "
        f"in transformers format: its folder (config.json with model.safetensors or pytorch_model.bin) at "
        f"{folder}, e.g. the files of https://huggingface.co/{spec.example} (OneFormer, Mask2Former, "
        "UperNet, SegFormer, BEiT and DPT models work)"
    )
    if spec.file is None or file_error is None:
        return f"ControlNet preprocessor {spec.module} needs {model}; {folder} has none. {spec.unreadable}"
    return (
        f"ControlNet annotator weights for {spec.module} are missing. Put {spec.file} into {store.root} "
        f"(or a subfolder of it; get it from {file_error.url}), or {model}. {file_error.reason}"
    )


def _segmenter(spec: _SegModel) -> Callable[[AnnotatorStore], Any]:
    def build(store: AnnotatorStore) -> Any:
        folder = store.find_folder(spec.folder)
        if folder is not None and has_weights(folder):
            source: Path = folder
        elif spec.file is None:
            message = _seg_missing(spec, store, None)
            url = f"https://huggingface.co/{spec.example}"
            raise AnnotatorWeightsMissing(spec.folder, store.root, url, "", message=message)
        else:
            try:
                source = store.resolve(spec.file)
            except AnnotatorWeightsMissing as exc:
                message = _seg_missing(spec, store, exc)
                raise AnnotatorWeightsMissing(
                    spec.file, exc.folder, exc.url, exc.reason, message=message
                ) from exc
        try:
            if source.is_dir():
                return load_segmenter(source, spec.dataset)
            return load_segmenter_file(source, spec.dataset)
        except Exception as exc:  # the reader's own errors say what is wrong; others are named by type
            reason = str(exc) if isinstance(exc, SegmentationModelError) else f"{type(exc).__name__}: {exc}"
            advice = (
                f" The file may be incomplete or a different network; delete it and download it again from "
                f"{store.url(source.name)}."
                if source.is_file()
                else ""
            )
            raise AnnotatorLoadError(
                f"Could not load the {spec.module} segmentation model from {source}: {reason}.{advice}"
            ) from exc

    return build


DEPTH_ANYTHING_VERSIONS = {"depth_anything": 1, "depth_anything_v2": 2}


def _depth_anything_source(store: AnnotatorStore, module: str) -> Path:
    """The first Depth Anything file or folder present for ``module``, else its default file (resolved)."""
    for filename in DEPTH_ANYTHING_FILES[module]:
        if (found := store.find(filename)) is not None:
            return found
    for name in DEPTH_ANYTHING_FOLDERS[module]:
        if (folder := store.find_folder(name)) is not None:
            return folder
    return store.resolve(DEPTH_ANYTHING_FILES[module][0])  # downloaded if allowed, else missing


def _depth_anything(module: str) -> Callable[[AnnotatorStore], Any]:
    def build(store: AnnotatorStore) -> Any:
        from webui.runtime.controlnet.depth_anything import load_depth_anything

        source = _depth_anything_source(store, module)
        try:
            return load_depth_anything(source, version=DEPTH_ANYTHING_VERSIONS[module])
        except Exception as exc:
            default = DEPTH_ANYTHING_FILES[module][0]
            raise AnnotatorLoadError(
                f"Could not load the {module} weights {source}: {exc}. Replace it with a published file, "
                f"e.g. {default} from {store.url(default)}."
            ) from exc

    return build


def _dwpose(store: AnnotatorStore) -> Any:
    from webui.runtime.controlnet.dwpose import DWPose

    def first(candidates: tuple[str, ...]) -> Path:
        found = next((path for name in candidates if (path := store.find(name)) is not None), None)
        return found if found is not None else store.resolve(candidates[0])  # downloaded if allowed

    detector, pose = first(DWPOSE_FILES["detector"]), first(DWPOSE_FILES["pose"])
    try:
        return DWPose(detector, pose)
    except Exception as exc:
        detail = str(exc).splitlines()[0][:300] if str(exc) else "no detail"
        published = ", ".join(store.url(files[0]) for files in DWPOSE_FILES.values())
        raise AnnotatorLoadError(
            f"Could not load DWPose from {detector.name} and {pose.name} ({type(exc).__name__}: {detail}). "
            f"Replace them with the published files: {published}."
        ) from exc


def _lama(store: AnnotatorStore) -> Any:
    from webui.runtime.controlnet.lama import load_lama

    return load_lama(store.resolve(LAMA_FILE))


COMPONENTS: dict[str, _Component] = {
    "openpose_body": _Component((OPENPOSE_BODY,), _body),
    "openpose_hand": _Component((OPENPOSE_HAND,), _hand),
    "openpose_face": _Component((OPENPOSE_FACE,), _face),
    "hed": _Component((HED_FILE,), _hed),
    "pidinet": _Component((PIDINET_FILE,), _pidinet),
    "lineart_realistic": _Component((LINEART_FILE,), _lineart(LINEART_FILE)),
    "lineart_coarse": _Component((LINEART_COARSE_FILE,), _lineart(LINEART_COARSE_FILE)),
    "lineart_anime": _Component((LINEART_ANIME_FILE,), _lineart_anime),
    "mlsd": _Component((MLSD_FILE,), _mlsd),
    "normal_bae": _Component((NORMAL_BAE_FILE,), _normal_bae),
    "midas": _Component((MIDAS_FILE,), _midas),
    "zoe": _Component((ZOE_FILE,), _zoe),
    "dwpose": _Component((), _dwpose),  # finds its files itself (ONNX or TorchScript)
    "lama": _Component((LAMA_FILE,), _lama, uses_aux=False),
    **{name: _Component((), _segmenter(spec), uses_aux=False) for name, spec in SEG_MODELS.items()},
    # finds its file itself (the first of several names present), so no files to resolve beforehand
    **{module: _Component((), _depth_anything(module), uses_aux=False) for module in DEPTH_ANYTHING_FILES},
}

# module -> (include_body, include_hand, include_face)
OPENPOSE_PARTS: dict[str, tuple[bool, bool, bool]] = {
    "openpose": (True, False, False),
    "openpose_hand": (True, True, False),
    "openpose_face": (True, False, True),
    "openpose_faceonly": (False, False, True),
    "openpose_full": (True, True, True),
}
# DWPose's variants draw the same parts from one detection of the whole body
DW_OPENPOSE_PARTS: dict[str, tuple[bool, bool, bool]] = {
    f"dw_{name}": parts for name, parts in OPENPOSE_PARTS.items()
}


def _components_for(module: str) -> tuple[str, ...]:
    if module in OPENPOSE_PARTS:
        _, hand, face = OPENPOSE_PARTS[module]
        return ("openpose_body", *(("openpose_hand",) if hand else ()), *(("openpose_face",) if face else ()))
    return {
        "depth_midas": ("midas",),
        "depth_zoe": ("zoe",),
        "lineart_realistic": ("lineart_realistic",),
        "lineart_coarse": ("lineart_coarse",),
        "lineart_anime": ("lineart_anime",),
        "softedge_hed": ("hed",),
        "softedge_hedsafe": ("hed",),
        "scribble_hed": ("hed",),
        "softedge_pidinet": ("pidinet",),
        "softedge_pidisafe": ("pidinet",),
        "scribble_pidinet": ("pidinet",),
        "mlsd": ("mlsd",),
        "normal_bae": ("normal_bae",),
        **{module: (name,) for module, name in SEG_MODULES.items()},
        **{module: (module,) for module in DEPTH_ANYTHING_FILES},
        **{module: ("dwpose",) for module in DW_OPENPOSE_PARTS},
        LAMA_MODULE: ("lama",),
    }.get(module, ())


def _keypoints(points: list[Any] | None, scale_x: float, scale_y: float) -> list[float] | None:
    if not points:
        return None
    flat: list[float] = []
    for point in points:
        if point is None:
            flat += [0.0, 0.0, 0.0]
        else:
            flat += [float(point.x) * scale_x, float(point.y) * scale_y, 1.0]
    return flat


def encode_people(poses: list[Any], scale_x: float = 1.0, scale_y: float = 1.0) -> list[dict[str, Any]]:
    """controlnet-aux ``PoseResult``s as OpenPose-JSON people (see :class:`DetectedMap`).

    controlnet-aux gives coordinates as fractions of the padded picture; ``scale_x``/``scale_y`` (padded
    size over cropped size) turn them into fractions of the returned map.
    """
    return [
        {
            "pose_keypoints_2d": _keypoints(list(pose.body.keypoints), scale_x, scale_y),
            "face_keypoints_2d": _keypoints(pose.face, scale_x, scale_y),
            "hand_left_keypoints_2d": _keypoints(pose.left_hand, scale_x, scale_y),
            "hand_right_keypoints_2d": _keypoints(pose.right_hand, scale_x, scale_y),
        }
        for pose in poses
    ]


def _mlsd_lines(model: torch.nn.Module, image: np.ndarray, score_min: float, length_min: float) -> np.ndarray:
    """M-LSD line segments of ``image``: white 1-pixel lines on black, at the image's size.

    The network predicts, at half resolution, a line-centre heat map and each centre's displacement to
    its two ends; a segment is kept when its centre scores above ``score_min`` and it is longer than
    ``length_min`` (in half-resolution pixels).
    """
    from controlnet_aux.mlsd.utils import deccode_output_score_and_ptss

    height, width = image.shape[:2]
    device = next(model.parameters()).device
    batch = np.concatenate([image.astype(np.float32), np.ones((height, width, 1), np.float32)], axis=2)
    batch = batch.transpose(2, 0, 1)[None] / 127.5 - 1.0
    output = model(torch.from_numpy(np.ascontiguousarray(batch)).to(device))
    centres, scores, displacement = deccode_output_score_and_ptss(output, 200, 3)
    canvas = np.zeros((height, width, 3), np.uint8)
    for (row, col), score in zip(centres, scores, strict=True):
        x0, y0, x1, y1 = displacement[row, col]
        if score <= score_min or math.hypot(x1 - x0, y1 - y0) <= length_min:
            continue
        start = (round(2 * (col + x0)), round(2 * (row + y0)))
        end = (round(2 * (col + x1)), round(2 * (row + y1)))
        cv2.line(canvas, start, end, (255, 255, 255), 1)
    return canvas


# -- the runner ---------------------------------------------------------------------------------------------


class Preprocessors:
    """Runs preprocessors by name, keeping the last few loaded networks (``cache_size``) in memory.

    Thread-safe: one preprocessor runs at a time. Loaded networks move to ``device`` unless it is the CPU.
    """

    def __init__(self, store: AnnotatorStore, device: str = "cpu", *, cache_size: int = 4) -> None:
        if cache_size < 3:
            raise ValueError("cache_size must hold at least the three OpenPose networks")
        self.store = store
        self.device = device
        self.cache_size = cache_size
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.RLock()

    # cache ---------------------------------------------------------------------------------------------

    def loaded(self) -> list[str]:
        """Names of the networks in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def unload(self) -> None:
        """Drop every loaded network."""
        with self._lock:
            self._loaded.clear()
            self._free_device_memory()

    def _free_device_memory(self) -> None:
        if self.device.startswith("cuda") and torch.cuda.is_available():
            # Some detectors (ZoeDepth's MiDaS core keeps forward hooks on itself) sit in reference cycles
            # and would hold their device memory until the next garbage collection.
            gc.collect()
            torch.cuda.empty_cache()

    def load(self, name: str) -> None:
        """Load the networks preprocessor ``name`` uses (fetching missing files as allowed); no run."""
        with self._lock:
            self._networks(resolve_module(name).name)

    def _component(self, name: str, keep: Iterable[str]) -> Any:
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            component = COMPONENTS[name]
            for filename in component.files:
                self.store.resolve(filename)  # AnnotatorWeightsMissing before importing anything heavy
            if component.uses_aux:
                _import_controlnet_aux()
            try:
                # Built as ordinary tensors even when called from a run (inside inference mode), so the
                # cached networks can later be moved or used outside it.
                with _quiet(), torch.inference_mode(False):
                    loaded = component.build(self.store)
                    if self.device != "cpu":
                        loaded = loaded.to(self.device)
            except (AnnotatorWeightsMissing, AnnotatorLoadError):
                raise
            except Exception as exc:
                files = ", ".join(component.files) or name  # no files: the builder finds its own
                detail = str(exc).splitlines()[0][:300] if str(exc) else ""
                advice = (
                    " The file may be incomplete or a different network; delete it and download it again "
                    f"from {self.store.url(component.files[0])}."
                    if component.files
                    else ""
                )
                raise AnnotatorLoadError(
                    f"Could not load the annotator weights {files} from {self.store.root}: "
                    f"{type(exc).__name__}: {detail}.{advice}"
                ) from exc
            keep = set(keep)
            while len(self._loaded) >= self.cache_size:
                victim = next((key for key in self._loaded if key not in keep), None)
                if victim is None:
                    break
                del self._loaded[victim]
                self._free_device_memory()
            self._loaded[name] = loaded
            return loaded

    def _networks(self, module: str) -> dict[str, Any]:
        names = _components_for(module)
        return {name: self._component(name, names) for name in names}

    # running -------------------------------------------------------------------------------------------

    def run(
        self,
        name: str,
        image: Image.Image,
        *,
        resolution: int = -1,
        threshold_a: float = -1,
        threshold_b: float = -1,
        seed: int | None = None,
    ) -> DetectedMap:
        """Run preprocessor ``name`` (a module name, label or alias) on ``image``.

        ``resolution`` is the processing resolution (the short side the module works at); ``threshold_a``
        and ``threshold_b`` are the module's two sliders. ``-1`` or a value outside a slider's range means
        its default. ``seed`` fixes ``shuffle``'s random flow (random when None).
        """
        info = resolve_module(name)
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        res_slider = info.resolution_slider
        res = int(res_slider.pick(resolution)) if res_slider is not None else 0
        a = info.threshold_a_slider.pick(threshold_a) if info.threshold_a_slider is not None else 0.0
        b = info.threshold_b_slider.pick(threshold_b) if info.threshold_b_slider is not None else 0.0
        with self._lock, torch.inference_mode():
            result, poses = self._dispatch(info, rgb, res, a, b, seed)
        return DetectedMap(image=Image.fromarray(_rgb3(result), "RGB"), module=info.name, poses=poses)

    def lama_fill(self, image: Image.Image, mask: Image.Image) -> Image.Image:
        """``inpaint_only+lama``'s first fill: the white part of ``mask`` painted by LaMa."""
        from webui.runtime.controlnet.lama import lama_fill

        with self._lock, torch.inference_mode():
            return lama_fill(self._networks(LAMA_MODULE)["lama"], image, mask)

    def _dispatch(
        self, info: PreprocessorInfo, rgb: np.ndarray, res: int, a: float, b: float, seed: int | None
    ) -> tuple[np.ndarray, list[dict[str, Any]] | None]:
        module = info.name
        if module == "none" or module in INPAINT_MODULES or module in IP_ADAPTER_MODULES:
            # inpaint: the mask is applied to the hint; IP-Adapter: the adapter encodes the picture itself
            return rgb.copy(), None
        if module == "invert":
            return 255 - rgb, None
        if module == "tile_resample":
            return _tile_resample(rgb, a), None
        scaled = _scale_and_pad(rgb, res)
        if module == "canny":
            return scaled.crop(_canny(scaled, a, b)), None
        if module == "scribble_xdog":
            return scaled.crop(_scribble_xdog(scaled, a)), None
        if module == "lineart_standard":
            return scaled.crop(_lineart_standard(scaled)), None
        if module == "shuffle":
            return _shuffle(scaled.crop(scaled.padded), seed), None
        if module == "mlsd":
            return scaled.crop(self._mlsd(scaled, a, b)), None
        if module in OPENPOSE_PARTS:
            return self._openpose(module, scaled)
        if module in DW_OPENPOSE_PARTS:
            return self._dwpose(module, scaled)
        if module in DEPTH_ANYTHING_FILES:  # at the scaled picture's own size (no padding in the min-max)
            return self._networks(module)[module].depth_map(scaled.crop(scaled.padded)), None
        networks = self._networks(module)
        return scaled.crop(self._detect(module, networks, scaled)), None

    def _detect(self, module: str, networks: dict[str, Any], scaled: _Scaled) -> np.ndarray:
        size = {"detect_resolution": scaled.short_side, "image_resolution": scaled.short_side}
        image = scaled.padded
        if module in ("softedge_hed", "softedge_hedsafe", "scribble_hed"):
            return networks["hed"](
                image,
                safe=module == "softedge_hedsafe",
                scribble=module == "scribble_hed",
                output_type="np",
                **size,
            )
        if module in ("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet"):
            return networks["pidinet"](
                image,
                safe=module == "softedge_pidisafe",
                scribble=module == "scribble_pidinet",
                apply_filter=False,
                output_type="np",
                **size,
            )
        if module in ("lineart_realistic", "lineart_coarse"):
            return networks[module](image, coarse=module == "lineart_coarse", output_type="np", **size)
        if module == "lineart_anime":
            return networks["lineart_anime"](image, output_type="np", **size)
        if module == "normal_bae":
            return networks["normal_bae"](image, output_type="np", **size)
        if module == "depth_midas":
            return networks["midas"](image, output_type="np", **size)
        if module == "depth_zoe":
            return networks["zoe"](image, output_type="np", **size)
        if module in SEG_MODULES:
            return networks[SEG_MODULES[module]](image)
        raise UnknownPreprocessorError(f"preprocessor {module!r} has no runner")  # a table/runner mismatch

    def _mlsd(self, scaled: _Scaled, value_threshold: float, distance_threshold: float) -> np.ndarray:
        detector = self._networks("mlsd")["mlsd"]
        return _mlsd_lines(detector.model, scaled.padded, value_threshold, distance_threshold)

    def _openpose(self, module: str, scaled: _Scaled) -> tuple[np.ndarray, list[dict[str, Any]]]:
        body, hand, face = OPENPOSE_PARTS[module]
        networks = self._networks(module)
        from controlnet_aux.open_pose import OpenposeDetector

        from webui.runtime.controlnet.pose import draw_people

        detector = OpenposeDetector(
            networks["openpose_body"], networks.get("openpose_hand"), networks.get("openpose_face")
        )
        poses = detector.detect_poses(scaled.padded, include_hand=hand, include_face=face)
        height, width = scaled.padded.shape[:2]
        canvas = draw_people(poses, height, width, body=body, hands=hand, face=face)
        people = encode_people(poses, width / scaled.width, height / scaled.height)
        return scaled.crop(_rgb3(canvas)), people

    def _dwpose(self, module: str, scaled: _Scaled) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """DWPose on the scaled picture (no padding: its crops take any size), drawn as OpenPose."""
        from webui.runtime.controlnet.pose import draw_people

        body, hand, face = DW_OPENPOSE_PARTS[module]
        picture = scaled.crop(scaled.padded)
        poses = self._networks(module)["dwpose"].detect(picture)
        canvas = draw_people(poses, scaled.height, scaled.width, body=body, hands=hand, face=face)
        return _rgb3(canvas), encode_people(poses)
