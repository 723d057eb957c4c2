"""Upscalers and the Extras tab: list upscalers, upscale images by factor or to a size.

Model upscalers run on the generation device, through the generation queue, so an upscale never competes
with a generation for GPU memory. Results are saved to ``outputs/extras-images/YYYY-MM-DD/`` with the
source image's parameters plus A1111's ``Postprocess ...`` keys.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, cast

from PIL import Image

from webui.domain.img2img import UPSCALER_NONE
from webui.domain.upscalers import ExtrasImage, ExtrasRequest, ExtrasResult
from webui.metadata.image_io import (
    ImageFormat,
    dated_output_dir,
    encode_image,
    read_infotext,
    save_image_atomic,
)
from webui.metadata.infotext import quote
from webui.registry.upscalers import UpscalerRecord, scan_upscalers
from webui.services import limits
from webui.services.img2img import decode_image

log = logging.getLogger(__name__)


class UnknownUpscalerError(ValueError):
    """No upscaler has that name; the message lists the known ones."""


KIND_EXTENSION = "extension"  # an upscaler an extension registered (``ext.add_upscaler``)
ExtensionUpscalers = Callable[[], dict[str, Callable[[Image.Image, float], Image.Image]]]


class UpscalerService:
    def __init__(
        self, models_root: Path, checkpoint_dir: Path, generation: Any, tokenizer_cache: Path
    ) -> None:
        self.models_root = models_root
        self.checkpoint_dir = checkpoint_dir  # also holds SD x4 upscalers (A1111 users keep them there)
        self.generation = generation
        self.tokenizer_cache = tokenizer_cache  # CLIP tokenizer files (single-file SD x4 upscalers)
        self._runner: Any = None
        # The active extensions' upscalers by name (set by webui.extensions.registrations), listed after the
        # others; a name Easel already has is not taken over.
        self.extension_upscalers: ExtensionUpscalers | None = None

    def available(self) -> list[UpscalerRecord]:
        records = scan_upscalers(self.models_root, self.checkpoint_dir)
        if self.extension_upscalers is not None:
            seen = {record.name.lower() for record in records}
            for name in self.extension_upscalers():
                if name.lower() not in seen:
                    seen.add(name.lower())
                    records.append(UpscalerRecord(name, None, 4, KIND_EXTENSION))
        return records

    def names(self) -> list[str]:
        return [record.name for record in self.available()]

    def find(self, name: str) -> UpscalerRecord:
        records = self.available()
        for record in records:
            if record.name == name:
                return record
        for record in records:
            if record.name.lower() == name.lower():
                return record
        known = ", ".join(record.name for record in records)
        raise UnknownUpscalerError(f"Unknown upscaler {name!r}. Known upscalers: {known}.")

    def runner(self) -> Any:
        if self._runner is None:
            from webui.runtime.upscalers import UpscalerRunner

            choice = self.generation.engine().choice
            self._runner = UpscalerRunner(choice.device, choice.dtype, tokenizer_cache=self.tokenizer_cache)
        return self._runner

    def upscale(self, image: Image.Image, name: str, width: int, height: int) -> Image.Image:
        """``image`` at exactly ``width`` x ``height`` through upscaler ``name`` (``None`` just resizes)."""
        return self.upscale_record(image, self.find(name), width, height)

    def upscale_record(
        self, image: Image.Image, record: UpscalerRecord, width: int, height: int
    ) -> Image.Image:
        """``upscale`` with an upscaler already found (``find``): no list is rebuilt per image."""
        if record.kind == KIND_EXTENSION:
            return self._extension_upscale(image, record.name, width, height)
        if record.path is None:
            from webui.runtime.upscalers import resize_builtin

            return resize_builtin(
                image, "Lanczos" if record.name == UPSCALER_NONE else record.name, width, height
            )
        return cast(
            Image.Image,
            self.runner().upscale(image, record.name, record.path, width, height, kind=record.kind),
        )

    def _extension_upscale(self, image: Image.Image, name: str, width: int, height: int) -> Image.Image:
        """An extension's ``upscaler(image, scale)`` at the scale that covers ``width`` x ``height``, then
        resized to exactly that (as Easel's own upscalers are)."""
        upscaler = (self.extension_upscalers() if self.extension_upscalers is not None else {}).get(name)
        if upscaler is None:
            raise UnknownUpscalerError(f"Upscaler {name!r} is not available: its extension is disabled.")
        scale = max(width / image.width, height / image.height)
        result = upscaler(image, scale)
        if result.size != (width, height):
            result = result.resize((width, height), Image.Resampling.LANCZOS)
        return result


def check_extras_limits(request: ExtrasRequest, image: Image.Image, what: str) -> None:
    if request.upscaler_1 == UPSCALER_NONE:
        return
    active = limits.active()
    if request.resize_mode == 1:
        width, height = request.upscaling_resize_w, request.upscaling_resize_h
        scale = max(width / image.width, height / image.height)
        active.check_output(round(image.width * scale), round(image.height * scale), what)
    else:
        active.check_upscale(request.upscaling_resize)
        scale = request.upscaling_resize
        active.check_output(round(image.width * scale), round(image.height * scale), what)


class ExtrasService:
    def __init__(
        self, upscalers: UpscalerService, generation: Any, options: Any, outputs_root: Path, faces: Any = None
    ) -> None:
        self.upscalers = upscalers
        self.faces = faces  # webui.services.faces.FaceRestoreService
        self.generation = generation
        self.options = options
        self.outputs_root = outputs_root

    def run(self, request: ExtrasRequest) -> ExtrasResult:
        """Decode and check everything first, then upscale on the generation queue (with GPU workers,
        ``--ray-address``: on a worker), then save."""
        images, first, second = self._checked(request)
        if self.generation.cluster_factory is not None:
            payload = {"mode": "extras", "request": request.model_dump(mode="json")}
            answer = self.generation.cluster().submit_task(payload).result()
            processed = [(Image.open(io.BytesIO(item["png"])), item["info"]) for item in answer]
        else:
            processed = self.generation.submit_call(
                lambda: [self._process(request, image, first, second) for image in images]
            ).result()
        results = []
        opts = self.options.get()
        fmt = cast(ImageFormat, request.samples_format)
        for index, ((image, info), source) in enumerate(zip(processed, images, strict=True)):
            original, _items = read_infotext(source)
            infotext = ", ".join(
                key if key == value else f"{key}: {quote(value)}" for key, value in info.items()
            )
            if original:
                infotext = f"{original}, {infotext}" if infotext else original
            data = encode_image(image, infotext or None, fmt, quality=opts.jpeg_quality)
            path = None
            if request.save_images and opts.samples_save:
                folder = dated_output_dir(self.outputs_root, "extras", date.today())
                path = str(save_image_atomic(data, folder, index, fmt))
                self.generation.notify_saved(path, infotext or None, image.size)
            name = request.names[index] if index < len(request.names) else f"image-{index + 1}"
            results.append(
                ExtrasImage(
                    name=name,
                    infotext=infotext,
                    width=image.width,
                    height=image.height,
                    path=path,
                    png_bytes=data,
                )
            )
        return ExtrasResult(request=request, images=results)

    def process_on_worker(self, request: ExtrasRequest) -> list[dict[str, Any]]:
        """A GPU worker's share of ``run``: each image upscaled and restored, as a lossless PNG with its
        infotext items (the front encodes, saves and numbers it)."""
        images, first, second = self._checked(request)
        answer = []
        for image in images:
            processed, info = self._process(request, image, first, second)
            buffer = io.BytesIO()
            processed.save(buffer, format="PNG")
            answer.append({"png": buffer.getvalue(), "info": info})
        return answer

    def _checked(
        self, request: ExtrasRequest
    ) -> tuple[list[Image.Image], UpscalerRecord, UpscalerRecord | None]:
        """The decoded images and the upscalers, once the request passed the server's limits and every
        model it names is there."""
        images = [decode_image(data, f"image {i + 1}") for i, data in enumerate(request.images)]
        for index, image in enumerate(images):  # the server's limits, before any work is queued
            check_extras_limits(request, image, f"The upscaled image {index + 1}")
        first = self.upscalers.find(request.upscaler_1)
        second = self.upscalers.find(request.upscaler_2) if request.extras_upscaler_2_visibility > 0 else None
        if second is not None and second.name == UPSCALER_NONE:
            second = None
        asked = {"GFPGAN": request.gfpgan_visibility, "CodeFormer": request.codeformer_visibility}
        for kind, visibility in asked.items():
            if visibility > 0:  # not installed: say so before any work is done
                if self.faces is None:
                    raise ValueError("Face restoration is not available in this setup.")
                self.faces.choose(kind)
        return images, first, second

    def _process(
        self,
        request: ExtrasRequest,
        image: Image.Image,
        first: UpscalerRecord,
        second: UpscalerRecord | None,
    ) -> tuple[Image.Image, dict[str, object]]:
        info: dict[str, object] = {}
        source = image.convert("RGB")
        if first.name == UPSCALER_NONE:  # A1111: upscaler 1 "None" leaves the size as it is
            return self._restore_faces(request, source, info)
        if request.resize_mode == 1:
            target_w, target_h = request.upscaling_resize_w, request.upscaling_resize_h
            scale = max(target_w / source.width, target_h / source.height)
            info["Postprocess upscale to"] = f"{target_w}x{target_h}"
        else:
            scale = request.upscaling_resize
            info["Postprocess upscale by"] = scale
        width, height = round(source.width * scale), round(source.height * scale)
        result = self.upscalers.upscale_record(source, first, width, height)
        info["Postprocess upscaler"] = first.name
        if second is not None:
            other = self.upscalers.upscale_record(source, second, width, height)
            result = Image.blend(result, other, request.extras_upscaler_2_visibility)
            info["Postprocess upscaler 2"] = second.name
        if request.resize_mode == 1 and request.upscaling_crop and (width, height) != (target_w, target_h):
            left, top = (width - target_w) // 2, (height - target_h) // 2
            result = result.crop((left, top, left + target_w, top + target_h))
            info["Postprocess crop to"] = f"{target_w}x{target_h}"
        return self._restore_faces(request, result, info)

    def _restore_faces(
        self, request: ExtrasRequest, image: Image.Image, info: dict[str, object]
    ) -> tuple[Image.Image, dict[str, object]]:
        """GFPGAN, then CodeFormer, each blended in at its visibility (A1111's order and infotext keys)."""
        if request.gfpgan_visibility > 0:
            image, _name, _faces = self.faces.restore(image, "GFPGAN", visibility=request.gfpgan_visibility)
            info["GFPGAN visibility"] = round(request.gfpgan_visibility, 3)
        if request.codeformer_visibility > 0:
            image, _name, _faces = self.faces.restore(
                image, "CodeFormer", visibility=request.codeformer_visibility,
                codeformer_weight=request.codeformer_weight,
            )  # fmt: skip
            info["CodeFormer visibility"] = round(request.codeformer_visibility, 3)
            info["CodeFormer weight"] = round(request.codeformer_weight, 3)
        return image, info
