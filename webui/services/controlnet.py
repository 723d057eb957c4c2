"""ControlNet on the service layer: the models in ``models/ControlNet``, the preprocessors, and the units of
a generation job.

``ControlNetService`` answers what the ControlNet tab and the extension's ``/controlnet/*`` API ask (model
list, preprocessors, control types, detect). ``check_units`` validates a request's units before the job is
queued (unknown preprocessor or model, a model of another family, no image) so a bad unit fails at once;
``prepare_units`` runs inside the job: it preprocesses each unit's image, loads its model and returns the
runtime plan, the infotext keys and the maps to show.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from PIL import Image

from webui.domain.controlnet import MODEL_NONE, ControlNetUnit, ControlResizeMode, infotext_extra
from webui.domain.controlnet_models import ControlNetKind, ControlNetRecord, base_of_family, fits
from webui.domain.controlnet_modules import (
    FACE_FILES,
    FACE_ID,
    FACE_ID_MODULES,
    FACE_ID_PLUS,
    INPAINT_MODULES,
    INPAINT_ONLY_MODULES,
    IP_ADAPTER_MODULES,
    LAMA_MODULE,
    PREPROCESSORS,
    RESOLUTION_LABEL,
    PreprocessorInfo,
    Slider,
    UnknownPreprocessorError,
    control_types,
    resolve_module,
)
from webui.domain.generation import DetectedMap, Img2ImgRequest, Txt2ImgRequest
from webui.metadata.image_io import dated_output_dir, encode_image, save_image_atomic
from webui.registry.controlnet import scan_controlnets
from webui.services.img2img import ImageInputError, decode_image

log = logging.getLogger(__name__)

__all__ = ["ControlNetInputError", "ControlNetService", "PreparedControl", "UnknownPreprocessorError"]


_TITLE = re.compile(r"(.*?)\s*\[([0-9a-fA-F]{8})\]")  # "name [hash8]", as the model list shows it


class ControlNetInputError(ValueError):
    """A ControlNet unit cannot be used as given; the message says which unit and what to do."""


def pixel_perfect_resolution(width: int, height: int, target_w: int, target_h: int, resize_mode: str) -> int:
    """The preprocessor resolution that gives one map pixel per output pixel (the extension's formula)."""
    k_h, k_w = target_h / height, target_w / width
    k = min(k_h, k_w) if resize_mode == ControlResizeMode.RESIZE_AND_FILL else max(k_h, k_w)
    return round(k * min(width, height))


@dataclass
class PreparedControl:
    """What ``prepare_units`` gives the job: the runtime plan, infotext keys, maps and warnings."""

    plan: Any = None  # webui.runtime.controlnet.apply.ControlPlan, None without active units
    infotext: dict[str, object] = field(default_factory=dict)
    maps: list[DetectedMap] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # txt2img with an ``inpaint_only`` unit: (picture, mask, resize mode) the job inpaints instead
    inpaint: tuple[Image.Image, Image.Image, str] | None = None


@dataclass
class ExtensionMap:
    """A map made outside the runtime's preprocessors (an extension's, LaMa's fill), shaped as the
    runtime's ``DetectedMap`` (no poses)."""

    image: Image.Image
    module: str
    poses: None = None


def extension_module_info(name: str) -> PreprocessorInfo:
    """How an extension's preprocessor is described: one resolution slider (passed to it), no thresholds
    of its own (the unit's ``threshold_a`` / ``threshold_b`` are passed as they are)."""
    return PreprocessorInfo(name, name, False, (Slider(RESOLUTION_LABEL, 512, 64, 2048, 8),), "All", ())


class ControlNetService:
    def __init__(
        self, controlnet_dir: Path, annotators_dir: Path, options: Any, *, clip_vision_dir: Path | None = None
    ) -> None:
        self.root = Path(controlnet_dir)
        self.annotators_dir = Path(annotators_dir)
        # CLIP image encoders for IP-Adapters: models/clip_vision, then the annotators folder
        self.encoder_dirs = [Path(clip_vision_dir)] if clip_vision_dir is not None else []
        self.encoder_dirs.append(self.annotators_dir)
        self.models_root = Path(clip_vision_dir).parent if clip_vision_dir is not None else None
        self._encoders: Any = None
        self._faces: tuple[tuple[Any, ...], Any] | None = None  # (files and device, FaceAnalyzer)
        self.options = options
        self._records: list[ControlNetRecord] | None = None
        self._lock = threading.Lock()
        self._preprocessors: Any = None
        self.download_progress: tuple[str, float] | None = None  # shown while annotator weights download
        self.progress_text: Any = None  # callable(str): the generation progress text, set by the container
        self.annotator_base_url: str | None = None  # source of missing annotator weights (None: default)
        self.preprocess_device: Any = None  # callable() -> "cuda" / "cpu": where preprocessors run
        # The active extensions' preprocessors by name (set by webui.extensions.registrations), offered after
        # Easel's own; a name Easel already has is not taken over.
        self.extension_preprocessors: Callable[[], dict[str, Callable[..., Image.Image]]] | None = None

    # -- models ----------------------------------------------------------------------------------------------
    def refresh(self) -> list[ControlNetRecord]:
        records = scan_controlnets(self.root)
        # ComfyUI keeps IP-Adapters in models/ipadapter: listed too (a name in models/ControlNet wins)
        extra = self.models_root / "ipadapter" if self.models_root is not None else None
        if extra is not None and extra.is_dir() and extra.resolve() != self.root.resolve():
            taken = {record.name.lower() for record in records}
            records += [
                record
                for record in scan_controlnets(extra)
                if record.kind is ControlNetKind.IP_ADAPTER and record.name.lower() not in taken
            ]
            records.sort(key=lambda record: record.name.lower())
        with self._lock:
            self._records = records
        return records

    def records(self) -> list[ControlNetRecord]:
        with self._lock:
            records = self._records
        return records if records is not None else self.refresh()

    def model_list(self, family: str | None = None) -> list[str]:
        """Titles (``name [hash8]``) of the usable models; with ``family``, only those that fit it."""
        return [r.title for r in self.records() if r.error is None and (family is None or fits(r, family))]

    def find(self, name: str) -> ControlNetRecord:
        """The model titled ``name`` (``name [hash8]``), else the one whose name matches without the hash,
        else the one with that hash (a file renamed since)."""
        records = [r for r in self.records() if r.error is None]
        wanted = name.strip()
        for record in records:
            if record.title == wanted:
                return record
        titled = _TITLE.fullmatch(wanted)
        bare = (titled.group(1) if titled else wanted).strip().lower()
        for record in records:
            if record.model_name.lower() == bare or Path(record.model_name).name.lower() == bare:
                return record
        short_hash = titled.group(2).lower() if titled else None
        for record in records:  # renamed since the infotext was written: the hash still finds it
            if short_hash is not None and (record.legacy_hash or "").lower() == short_hash:
                return record
        known = ", ".join(r.title for r in records) or f"none: put ControlNet models into {self.root}"
        raise ControlNetInputError(f"ControlNet model {name!r} not found. Available: {known}")

    # -- preprocessors ---------------------------------------------------------------------------------------
    def control_types(self) -> dict[str, Any]:
        return control_types(self.model_list())

    def preprocessors(self) -> Any:
        """The runtime preprocessor runner (imports torch on first use)."""
        with self._lock:
            if self._preprocessors is None:
                from webui.runtime.controlnet.preprocessors import AnnotatorStore, Preprocessors

                extra = {"base_url": self.annotator_base_url} if self.annotator_base_url else {}
                store = AnnotatorStore(
                    self.annotators_dir,
                    allow_download=bool(self.options.get().control_net_allow_download),
                    progress=self._on_download,
                    **extra,
                )
                device = self.preprocess_device() if self.preprocess_device is not None else "cpu"
                self._preprocessors = Preprocessors(store, device=device)
            preprocessors = self._preprocessors
        preprocessors.store.allow_download = bool(self.options.get().control_net_allow_download)
        return preprocessors

    def _on_download(self, message: str, fraction: float) -> None:
        self.download_progress = (message, fraction) if fraction < 1.0 else None
        if self.progress_text is not None:  # shown as the running job's progress text
            self.progress_text(f"{message}: {fraction:.0%}")

    def _extension_modules(self) -> dict[str, Callable[..., Image.Image]]:
        if self.extension_preprocessors is None:
            return {}
        builtin = {name.lower() for info in PREPROCESSORS for name in (info.name, info.label, *info.aliases)}
        found = self.extension_preprocessors()
        return {name: fn for name, fn in found.items() if name.lower() not in builtin}

    def module_names(self) -> list[str]:
        """Every preprocessor a unit can use: Easel's, then the extensions'."""
        return [info.name for info in PREPROCESSORS] + list(self._extension_modules())

    def module_info(self, name: str) -> PreprocessorInfo:
        """The preprocessor called ``name`` (Easel's by any of its names, or an extension's; any case)."""
        try:
            return resolve_module(name)
        except UnknownPreprocessorError:
            for extension_name in self._extension_modules():
                if extension_name.lower() == name.strip().lower():
                    return extension_module_info(extension_name)
            raise UnknownPreprocessorError(
                f"Unknown ControlNet preprocessor {name!r}. Valid names: {', '.join(self.module_names())}."
            ) from None

    def detect(
        self,
        module: str,
        image: Image.Image,
        resolution: int = -1,
        threshold_a: float = -1,
        threshold_b: float = -1,
    ) -> Any:
        """Run preprocessor ``module`` on ``image``; returns a ``DetectedMap`` (``.image``, ``.poses``)."""
        extension = self._extension_modules()
        name = self.module_info(module).name  # UnknownPreprocessorError lists the valid names
        if name in FACE_ID_MODULES:  # the picture with the faces found, the one the unit uses in green
            from webui.runtime.controlnet.face_embedding import draw_faces

            return ExtensionMap(draw_faces(image, self._face_analyzer().faces(image)), name)
        if name in extension:
            size = resolution if resolution > 0 else 512
            result = extension[name](image, size, threshold_a=threshold_a, threshold_b=threshold_b)
            return ExtensionMap(result.convert("RGB"), name)
        return self.preprocessors().run(
            module, image, resolution=resolution, threshold_a=threshold_a, threshold_b=threshold_b
        )

    def lama_fill(self, image: Image.Image, mask: Image.Image) -> Image.Image:
        """``inpaint_only+lama``'s first step: the white part of ``mask`` filled by LaMa
        (``ControlNetLama.pth`` in the annotators folder; downloaded only when downloads are on)."""
        filled: Image.Image = self.preprocessors().lama_fill(image, mask)
        return filled

    def image_encoders(self) -> Any:
        """The CLIP image encoders of IP-Adapters (``ip_adapter.ImageEncoders``; torch on first use)."""
        with self._lock:
            if self._encoders is None:
                from webui.runtime.controlnet.ip_adapter import ImageEncoders

                self._encoders = ImageEncoders(self.encoder_dirs, self.models_root)
            return self._encoders

    def encoder_gpu_bytes(self) -> int:
        """GPU memory the kept IP-Adapter image encoder holds (released when a job needs the room)."""
        return int(self._encoders.gpu_bytes()) if self._encoders is not None else 0

    def release_encoders(self) -> None:
        if self._encoders is not None:
            self._encoders.unload()

    def face_dirs(self) -> list[Path]:
        """Where InsightFace's files are looked for: ``models/insightface``, then the annotators folder."""
        own = [self.models_root / "insightface"] if self.models_root is not None else []
        return [*own, self.annotators_dir]

    def _face_analyzer(self) -> Any:
        """InsightFace's detector and recogniser (``FACE_FILES``), loaded once and kept; a clear error naming
        the files and the folder when one is missing."""
        from webui.runtime.controlnet.face_embedding import FaceAnalyzer, find_face_files

        found = find_face_files(self.face_dirs())
        missing = [name for name in FACE_FILES if found.get(name) is None]
        if missing:
            where = self.face_dirs()[0] / "models" / "buffalo_l"
            raise ControlNetInputError(
                f"IP-Adapter FaceID needs InsightFace's face models, and {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing: put {FACE_FILES[0]} and {FACE_FILES[1]} "
                f"(from InsightFace's buffalo_l.zip model pack) into {where}."
            )
        device = str(self.preprocess_device()) if self.preprocess_device is not None else "cpu"
        key = (*((str(path), path.stat().st_mtime) for path in found.values() if path is not None), device)
        with self._lock:
            if self._faces is not None and self._faces[0] == key:
                return self._faces[1]
            try:
                analyzer = FaceAnalyzer(found[FACE_FILES[0]], found[FACE_FILES[1]], device)
            except Exception as exc:  # ONNX Runtime's own errors (InvalidProtobuf ...) derive from Exception
                detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise ControlNetInputError(
                    f"InsightFace's face models could not be loaded ({detail}); replace {FACE_FILES[0]} and "
                    f"{FACE_FILES[1]} with the files of buffalo_l.zip."
                ) from exc
            self._faces = (key, analyzer)
            return analyzer

    def _ip_adapter_tokens(self, module: str, loaded: Any, images: list[Image.Image], label: str) -> Any:
        """The image tokens of an IP-Adapter unit: ``images`` encoded by the module's CLIP image encoder
        (several pictures: their embeddings averaged) and, for FaceID, the identity of their largest face."""
        import torch

        from webui.runtime.controlnet.face_embedding import FaceEmbeddingError, face_embedding
        from webui.runtime.controlnet.ip_adapter import IPAdapterError, IPAdapterTokens

        adapter = loaded.model
        _check_face_pairing(module, adapter.variant, loaded.record.title, label)
        face = None
        if adapter.uses_face:
            try:
                face = torch.from_numpy(face_embedding(self._face_analyzer(), images))
            except FaceEmbeddingError as exc:
                raise ControlNetInputError(f"{label}: {exc}") from exc
            if not adapter.uses_clip:
                return IPAdapterTokens(adapter, face, torch.zeros_like(face))
        device = self.preprocess_device() if self.preprocess_device is not None else "cpu"
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        try:
            own = getattr(loaded.model, "encoder_hint", None)
            encoder = self.image_encoders().get(IP_ADAPTER_MODULES[module], dtype, str(device), own=own)
        except IPAdapterError as exc:
            raise ControlNetInputError(f"{label}: {exc}") from exc
        hidden = adapter.uses_hidden_states
        width = encoder.hidden_dim if hidden else encoder.embed_dim
        if width != adapter.image_embed_dim:
            what = "hidden states" if hidden else "embeddings"
            raise ControlNetInputError(
                f"{label}: {loaded.record.title} reads {adapter.image_embed_dim}-wide CLIP {what}, but "
                f"{encoder.name} (preprocessor {module}) gives {width}-wide ones: choose the preprocessor of "
                "the encoder this IP-Adapter was trained with (ip-adapter_clip_sd15 for ViT-H, "
                "ip-adapter_clip_sdxl for ViT-bigG)."
            )
        cond, uncond = encoder.encode(images, hidden)
        if face is not None:  # FaceID Plus: the identity read against the picture's CLIP hidden states
            return IPAdapterTokens(adapter, (face, cond), (torch.zeros_like(face), uncond))
        return IPAdapterTokens(adapter, cond, uncond)

    # -- units of a job --------------------------------------------------------------------------------------
    def check_units(self, request: Txt2ImgRequest | Img2ImgRequest, family: str | None) -> None:
        """Fail before queueing when an active unit cannot run (see the module doc)."""
        units = [u for u in request.controlnet_units if u.is_active]
        if units and isinstance(request, Img2ImgRequest) and request.sd_upscale is not None:
            raise ControlNetInputError(
                "ControlNet units cannot be combined with the SD upscale script; "
                "disable the units or the script."
            )
        for index, unit in enumerate(request.controlnet_units):
            label = f"ControlNet unit {index}"
            if unit.enabled and unit.model == MODEL_NONE:  # skipped, it would be lost silently
                where = (
                    "choose one in its Model list"
                    if self.model_list()
                    else f"put ControlNet models into {self.root} and press Refresh models"
                )
                raise ControlNetInputError(f"{label} is enabled but has no model: {where}, or turn it off.")
            if not unit.is_active:
                continue
            try:
                self.module_info(unit.module)
            except UnknownPreprocessorError as exc:
                raise ControlNetInputError(f"{label}: {exc}") from exc
            record = self.find(unit.model)
            if family is not None and not fits(record, family):
                raise ControlNetInputError(
                    f"{label}: {record.title} is a ControlNet for {_base_label(record.base)}, but the "
                    f"checkpoint is {_base_label(base_of_family(family))}. Choose a ControlNet made for this "
                    "checkpoint's family."
                )
            module = self.module_info(unit.module).name
            gallery = _merged_inputs(unit, module, label)
            if unit.image is None and not gallery and not isinstance(request, Img2ImgRequest):
                raise ControlNetInputError(f"{label} is enabled but has no image: upload a control image.")
            image = decode_image(unit.image, f"control image of {label}") if unit.image is not None else None
            for number, data in enumerate(gallery):
                decode_image(data, f"reference picture {number + 1} of {label}")
            if module in INPAINT_MODULES:
                self._check_inpaint_unit(request, unit, module, image, label)
            _check_ip_adapter_pairing(module, record, label)

    @staticmethod
    def _check_inpaint_unit(
        request: Txt2ImgRequest | Img2ImgRequest,
        unit: ControlNetUnit,
        module: str,
        image: Image.Image | None,
        label: str,
    ) -> None:
        if unit.mask is None:
            if isinstance(request, Img2ImgRequest) and request.mask:
                return  # the unit takes img2img's inpaint mask
            where = (
                "img2img's inpaint mask or the unit's"
                if isinstance(request, Img2ImgRequest)
                else "the unit's"
            )
            raise ControlNetInputError(
                f"{label} uses {unit.module}, which repaints the masked part of its picture, but there is no "
                f"mask: paint {where} mask (white = repaint)."
            )
        mask = decode_image(unit.mask, f"mask of {label}")
        if image is not None and mask.size != image.size:
            raise ControlNetInputError(
                f"The mask of {label} is {mask.width}x{mask.height} but its image is "
                f"{image.width}x{image.height}; the mask must have the image's size."
            )
        if isinstance(request, Txt2ImgRequest) and request.enable_hr and module in INPAINT_ONLY_MODULES:
            raise ControlNetInputError(
                f"{label}: {module} in txt2img repaints the masked part of the unit's picture at its "
                "size and cannot be combined with Hires. fix; turn Hires. fix off, or use "
                "inpaint_global_harmonious."
            )

    def prepare_units(
        self,
        engine: Any,
        model: Any,
        request: Txt2ImgRequest | Img2ImgRequest,
        *,
        init_image: Image.Image | None = None,
        init_mask: Image.Image | None = None,
        progress: Any = None,
        outputs_root: Path | None = None,
        seed: int = 0,
    ) -> PreparedControl:
        """Preprocess and load the request's active units for ``model`` (the caller holds the engine lock).

        ``init_image`` / ``init_mask`` are img2img's first picture and its inpaint mask (``L``, white =
        repaint, already inverted as the request asks): a unit without an image uses the picture, an
        inpaint unit without a mask the mask.
        """
        from webui.runtime.controlnet.apply import ControlPlan, ControlUnitInput

        prepared = PreparedControl()
        opts = self.options.get()
        inputs = []
        shown_units = list(request.controlnet_units)  # the infotext shows the values used
        for index, unit in enumerate(request.controlnet_units):
            if not unit.is_active:
                continue
            label = f"ControlNet unit {index}"
            if progress is not None:
                progress.set_text(f"Preparing {label} ({unit.module})")
            gallery = [
                decode_image(data, f"reference picture {number + 1} of {label}")
                for number, data in enumerate(_merged_inputs(unit, self.module_info(unit.module).name, label))
            ]
            source = decode_image(unit.image, f"control image of {label}") if unit.image else init_image
            source = source if source is not None or not gallery else gallery[0]
            if source is None:
                raise ControlNetInputError(f"{label} is enabled but has no image: upload a control image.")
            info = self.module_info(unit.module)
            resolution = unit.processor_res
            if unit.pixel_perfect:
                resolution = pixel_perfect_resolution(
                    source.width, source.height, request.width, request.height, unit.resize_mode
                )
            detected = self.detect(info.name, source, resolution, unit.threshold_a, unit.threshold_b)
            mask = None
            if info.name in INPAINT_MODULES:
                mask = _inpaint_mask(unit, init_mask, detected.image.size, label)
                if info.name == LAMA_MODULE:  # LaMa fills the mask first: the repaint starts from that
                    if progress is not None:
                        progress.set_text(f"Filling the mask of {label} with LaMa")
                    source = self.lama_fill(source, mask)
                    detected = ExtensionMap(source, info.name)
                if (
                    info.name in INPAINT_ONLY_MODULES
                    and isinstance(request, Txt2ImgRequest)
                    and prepared.inpaint is None
                ):
                    prepared.inpaint = (source, mask, unit.resize_mode.value)
            record = self.find(unit.model)
            loaded = engine.controlnet(
                record, model, low_vram=unit.low_vram, cache_size=opts.control_net_model_cache_size
            )
            ip_tokens = None
            if info.name in IP_ADAPTER_MODULES:
                if progress is not None:
                    progress.set_text(f"Encoding the image prompt of {label}")
                pictures = gallery or [source]
                ip_tokens = self._ip_adapter_tokens(info.name, loaded, pictures, label)
            inputs.append(
                ControlUnitInput(
                    control=loaded,
                    image=detected.image,
                    weight=unit.weight,
                    guidance_start=unit.guidance_start,
                    guidance_end=unit.guidance_end,
                    control_mode=unit.control_mode.value,
                    resize_mode=unit.resize_mode.value,
                    hr_option=unit.hr_option.value,
                    mask=mask,
                    ip_tokens=ip_tokens,
                )
            )
            # A -1 "default" is written as the default's value.
            shown_units[index] = unit.model_copy(
                update={
                    "model": record.title,
                    "processor_res": _effective(info.resolution_slider, resolution),
                    "threshold_a": _effective(info.threshold_a_slider, unit.threshold_a),
                    "threshold_b": _effective(info.threshold_b_slider, unit.threshold_b),
                }
            )
            shown = detected.image if mask is None else _masked_black(detected.image, mask)
            prepared.maps.append(
                self._detected_map(index, info.name, shown, unit, opts, outputs_root, request.mode, seed)
            )
            if unit.weight == 0:
                prepared.warnings.append(f"{label} has weight 0: it has no effect.")
        if inputs:
            prepared.plan = ControlPlan(inputs)
            prepared.infotext = infotext_extra(shown_units)
        return prepared

    @staticmethod
    def _detected_map(
        index: int,
        module: str,
        image: Image.Image,
        unit: ControlNetUnit,
        opts: Any,
        outputs_root: Path | None,
        mode: str,
        seed: int,
    ) -> DetectedMap:
        data = encode_image(image.convert("RGB"), None, "png")
        path = None
        if opts.control_net_detectmap_autosaving and outputs_root is not None and unit.save_detected_map:
            folder = dated_output_dir(outputs_root, mode, date.today()) / "detected_maps"
            path = str(save_image_atomic(data, folder, seed, "png"))
        return DetectedMap(
            unit=index, module=module, png_bytes=data, path=path, returned=unit.save_detected_map
        )


def _merged_inputs(unit: ControlNetUnit, module: str, label: str) -> list[str]:
    """The pictures of a unit in the extension's "merge" input mode (IP-Adapter units only), else []."""
    if unit.input_mode == "batch":
        raise ControlNetInputError(
            f"{label}: input_mode 'batch' (a folder on the server) is not supported; send the pictures in "
            "batch_input_gallery with input_mode 'merge' (IP-Adapter), or one image with 'simple'."
        )
    if unit.input_mode != "merge":
        return []
    if module not in IP_ADAPTER_MODULES:
        raise ControlNetInputError(
            f"{label}: input_mode 'merge' (several pictures) works with the IP-Adapter preprocessors only; "
            f"{module} takes one image."
        )
    if not unit.batch_input_gallery:
        raise ControlNetInputError(f"{label}: input_mode 'merge' needs pictures in batch_input_gallery.")
    return list(unit.batch_input_gallery)


def _check_ip_adapter_pairing(module: str, record: ControlNetRecord, label: str) -> None:
    """An IP-Adapter model needs an ``ip-adapter_*`` preprocessor, and those need an IP-Adapter model."""
    is_ip = record.kind is ControlNetKind.IP_ADAPTER
    if is_ip and module not in IP_ADAPTER_MODULES:
        raise ControlNetInputError(
            f"{label}: {record.title} is an IP-Adapter; choose an ip-adapter preprocessor "
            f"({', '.join(IP_ADAPTER_MODULES)}) for it."
        )
    if module in IP_ADAPTER_MODULES and not is_ip:
        raise ControlNetInputError(
            f"{label}: the {module} preprocessor feeds an IP-Adapter, but {record.title} is a ControlNet; "
            "choose an IP-Adapter model (ip-adapter_sd15.safetensors ...) from models/ControlNet."
        )


def _check_face_pairing(module: str, variant: str, title: str, label: str) -> None:
    """FaceID models read the ``ip-adapter_face_id*`` preprocessor of their kind; the others a CLIP one."""
    wanted = {"faceid": FACE_ID, "faceid_plus": FACE_ID_PLUS}.get(variant)
    if wanted is not None and module != wanted:
        raise ControlNetInputError(
            f"{label}: {title} is an IP-Adapter FaceID{' Plus' if variant == 'faceid_plus' else ''} model; "
            f"choose the {wanted} preprocessor for it."
        )
    if wanted is None and module in FACE_ID_MODULES:
        raise ControlNetInputError(
            f"{label}: the {module} preprocessor gives a face identity, which only IP-Adapter FaceID models "
            f"read, and {title} is not one: choose ip-adapter_clip_sd15 (or _sdxl) for it, or a FaceID model "
            "(ip-adapter-faceid_sd15.bin ...)."
        )


def _inpaint_mask(
    unit: ControlNetUnit, init_mask: Image.Image | None, size: tuple[int, int], label: str
) -> Image.Image:
    """The ``L`` mask (white = repaint) of an inpaint unit at its picture's ``size``: the unit's own, else
    img2img's inpaint mask."""
    from webui.runtime.masks import mask_from_image

    if unit.mask is not None:
        mask = mask_from_image(decode_image(unit.mask, f"mask of {label}"))
    elif init_mask is not None:
        mask = init_mask
    else:
        raise ControlNetInputError(
            f"{label} uses {unit.module} but there is no mask: paint one (white = repaint)."
        )
    mask = mask.convert("L")
    return mask if mask.size == size else mask.resize(size, Image.Resampling.NEAREST)


def _masked_black(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The picture as the inpaint ControlNet sees it, for the preview: the part to paint in black."""
    return Image.composite(
        Image.new("RGB", image.size), image.convert("RGB"), mask.point(lambda v: 255 * (v >= 128))
    )


def _effective(slider: Any, value: float) -> Any:
    if slider is None:
        return value
    picked = slider.pick(value)
    return type(value)(picked) if isinstance(value, int) else float(picked)


def _base_label(base: str | None) -> str:
    return {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}.get(base or "", "an unknown model family")


__all__ += ["ImageInputError", "pixel_perfect_resolution"]
