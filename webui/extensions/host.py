"""``EaselHost``: the :class:`webui.extensions.api.Easel` facade over Easel's services.

Extensions reach Easel only through this object (``ext.easel``). Generation goes through the one queue:
a selected script runs as one queued job (:meth:`EaselHost.run_script`), and the ``txt2img`` / ``img2img``
calls it makes run at once inside that job; called from anywhere else they wait their turn in the queue.
Calls made on the queue's own thread (a script's ``run``, a hook) always run inline, so nothing an
extension does can wait on itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from webui.domain.generation import GeneratedImage, GenerationResult, Img2ImgRequest, Txt2ImgRequest
from webui.domain.samplers import sampler_names, schedule_labels
from webui.extensions.api import (
    CheckpointInfo,
    Extension,
    ExtensionError,
    ExtensionInputError,
    Request,
    Script,
    ScriptRun,
    Tab,
)
from webui.metadata.image_io import ImageFormat, encode_image, save_image_atomic
from webui.metadata.infotext import parse_infotext

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

GRID_FOLDER = "{mode}-grids"  # outputs/txt2img-grids/<date>/, as A1111


@dataclass
class _ScriptScope:
    """The script whose job is running on this thread."""

    extension: Extension
    script: Script
    inner_errors: list[BaseException]
    interrupted: bool = False
    user: str | None = None  # whom the script's jobs belong to (the GPU workers' fair shares)


class EaselHost:
    """Implements ``webui.extensions.api.Easel`` over a ``webui.container.Services``."""

    def __init__(self, services: Any) -> None:
        self._services = services
        self._local = threading.local()

    # -- generation ------------------------------------------------------------------------------------------
    @property
    def _generation(self) -> Any:
        return self._services.generation

    def _scope(self) -> _ScriptScope | None:
        return cast(_ScriptScope | None, getattr(self._local, "scope", None))

    def _on_queue_thread(self) -> bool:
        worker = getattr(self._generation, "_worker", None)
        return self._scope() is not None or threading.current_thread() is worker

    def _run(self, request: Request) -> GenerationResult:
        generation = self._generation
        if not self._on_queue_thread():
            if isinstance(request, Img2ImgRequest):
                return cast(GenerationResult, generation.submit_img2img(request).result())
            return cast(GenerationResult, generation.submit_txt2img(request).result())
        scope = self._scope()
        try:
            result = cast(GenerationResult, generation.run_now(request, user=scope.user if scope else None))
        except BaseException as exc:
            if scope is not None:
                scope.inner_errors.append(exc)  # Easel's own error, not the script's bug
            raise
        if scope is not None and result.interrupted:
            scope.interrupted = True
        return result

    def txt2img(self, request: Txt2ImgRequest) -> GenerationResult:
        if not isinstance(request, Txt2ImgRequest):
            raise ExtensionError(f"txt2img needs a Txt2ImgRequest, got {type(request).__name__}")
        return self._run(request)

    def img2img(self, request: Img2ImgRequest) -> GenerationResult:
        if not isinstance(request, Img2ImgRequest):
            raise ExtensionError(f"img2img needs an Img2ImgRequest, got {type(request).__name__}")
        return self._run(request)

    def run_script(
        self,
        extension: Extension,
        script: Script,
        request: Request,
        args: list[Any],
        tab: Tab,
        task_id: str | None = None,
        user: str | None = None,
    ) -> Future[GenerationResult]:
        """Queue ONE job that runs ``script.run(ScriptRun(request, self, tab), *args)``.

        The future fails with :class:`ExtensionError` naming the extension when the script raises. A bug in
        the script (any error other than ``ValueError`` / ``ExtensionError``, or an error of a generation it
        asked for) also disables the extension until a reload, through the manager's ``fail``.
        """
        generation = self._generation
        progress = generation.progress

        def job() -> GenerationResult:
            scope = _ScriptScope(extension, script, [], user=user)
            self._local.scope = scope
            progress.begin_script(script.title)
            try:
                result = script.run(ScriptRun(request=request, easel=self, tab=tab), *args)
                if not isinstance(result, GenerationResult):
                    raise TypeError(f"run() returned {type(result).__name__}, not a GenerationResult")
                return result
            except Exception as exc:
                raise self._script_error(extension, script, scope, exc) from exc
            finally:
                self._local.scope = None
                progress.end_script()

        return cast("Future[GenerationResult]", generation.submit_call(job, task_id))

    def _script_error(
        self, extension: Extension, script: Script, scope: _ScriptScope, exc: Exception
    ) -> ExtensionError:
        title = extension.manifest.title
        where = f"script '{script.title}'"
        if any(exc is inner for inner in scope.inner_errors) or isinstance(exc, ValueError | ExtensionError):
            # bad input, or a generation the script asked for failed: the job fails, the extension stays on
            text = str(exc) or type(exc).__name__
            message = text if text.startswith(f"{script.title}:") else f"{script.title}: {text}"
            log.warning("extension %r, %s: %s", extension.name, where, exc)
            return ExtensionInputError(message) if isinstance(exc, ValueError) else ExtensionError(message)
        manager = getattr(self._services, "extensions", None)
        if manager is not None:
            return ExtensionError(manager.fail(extension.name, where, exc))
        log.error("extension %r failed in %s", extension.name, where, exc_info=exc)
        return ExtensionError(f"Extension '{title}' failed in {where}: {type(exc).__name__}: {exc}")

    # -- models and lists ------------------------------------------------------------------------------------
    def checkpoints(self) -> list[CheckpointInfo]:
        return [_checkpoint_info(record) for record in self._services.models.checkpoints()]

    def refresh_checkpoints(self) -> list[CheckpointInfo]:
        return [_checkpoint_info(record) for record in self._services.models.refresh()]

    def vaes(self) -> list[str]:
        root = self._services.models.settings.vae_path
        return [path.relative_to(root).as_posix() for path in self._services.models.vaes()]

    def samplers(self) -> list[str]:
        return sampler_names()

    def schedulers(self) -> list[str]:
        return schedule_labels()

    def upscalers(self) -> list[str]:
        service = self._services.upscalers
        return list(service.names()) if service is not None else []

    def options(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._services.options.as_dict())

    def parse_infotext(self, text: str) -> dict[str, Any]:
        return dict(parse_infotext(text))

    # -- images ----------------------------------------------------------------------------------------------
    def save_grid(self, image: Image.Image, request: Request, infotext: str) -> GeneratedImage:
        """Encode the grid with ``infotext``; save it to ``outputs/<mode>-grids/<date>/`` when the option
        ``grid_save`` is on and the request saves images."""
        opts = self._generation.job_options(request)
        fmt = cast(ImageFormat, _image_format(getattr(opts, "grid_format", None), request.samples_format))
        seed = request.seed
        data = encode_image(image, infotext if opts.enable_pnginfo else None, fmt, quality=opts.jpeg_quality)
        path = None
        if request.save_images and getattr(opts, "grid_save", True):
            root = Path(self._generation.outputs_root)
            folder = root / GRID_FOLDER.format(mode=request.mode) / date.today().isoformat()
            path = str(save_image_atomic(data, folder, seed, fmt))
            self._generation.notify_saved(path, infotext, image.size)
        return _generated(request, seed, infotext, path, data)

    def encode_image(self, image: Image.Image, request: Request, infotext: str, seed: int) -> GeneratedImage:
        """Encode (and, as a job's images are, save) an image a script made itself."""
        opts = self._generation.job_options(request)
        fmt = cast(ImageFormat, request.samples_format)
        data = encode_image(image, infotext if opts.enable_pnginfo else None, fmt, quality=opts.jpeg_quality)
        path = None
        if request.save_images and opts.samples_save:
            root = Path(self._generation.outputs_root)
            folder = root / f"{request.mode}-images" / date.today().isoformat()
            path = str(save_image_atomic(data, folder, seed, fmt))
            self._generation.notify_saved(path, infotext, image.size)
        return _generated(request, seed, infotext, path, data)

    def clip_score(self, image: Image.Image, prompt: str) -> float | None:
        clip = self._services.clip
        if clip is None or not clip.available() or not prompt.strip():
            return None
        return float(clip.score([image], prompt).scores[0])

    def interrogate(self, image: Image.Image) -> str:
        """The CLIP service's prompt for ``image`` (the img2img tab's Interrogate CLIP)."""
        clip = self._services.clip
        if clip is None or not clip.available():
            note = clip.missing_note() if clip is not None else "no CLIP model is configured"
            raise ExtensionError(f"CLIP interrogation is not available: {note}")
        try:
            return str(clip.interrogate(image.convert("RGB")))
        except (LookupError, ValueError, OSError) as exc:
            raise ExtensionError(f"CLIP interrogation failed: {exc}") from exc

    # -- progress --------------------------------------------------------------------------------------------
    def set_progress(self, text: str, fraction: float | None = None) -> None:
        """Inside a script's job: the script's line (shown before each job's own) and its share done (the
        progress bar); elsewhere: the running job's line."""
        progress = self._generation.progress
        if progress.script_running and self._on_queue_thread():
            progress.set_script_progress(text, fraction)
        else:
            progress.set_text(text)

    @property
    def interrupted(self) -> bool:
        progress = self._generation.progress
        scope = self._scope()
        if scope is not None and scope.interrupted:
            return True
        return bool(progress.script_interrupted or (progress.busy and progress.interrupted))

    # -- merger ----------------------------------------------------------------------------------------------
    def merge_checkpoints(
        self,
        primary: str,
        secondary: str,
        tertiary: str | None = None,
        *,
        method: str = "weighted_sum",
        multiplier: float = 0.3,
        name: str = "",
        precision: str = "fp16",
        bake_vae: str | None = None,
        copy_config: bool = True,
        progress: Callable[[str, float], None] | None = None,
    ) -> str:
        merge = getattr(self._services, "merge", None)
        if merge is None:
            raise ExtensionError("The checkpoint merger is not available in this setup.")
        return cast(
            str,
            merge.merge(
                primary,
                secondary,
                tertiary,
                method=method,
                multiplier=multiplier,
                name=name,
                precision=precision,
                bake_vae=bake_vae,
                copy_config=copy_config,
                progress=progress,
            ),
        )


def _checkpoint_info(record: Any) -> CheckpointInfo:
    family = record.family.value if record.family is not None else "unknown"
    return CheckpointInfo(
        title=record.title, name=record.name, family=family, path=Path(record.path), hash=record.short_hash
    )


def _image_format(option: str | None, fallback: str) -> str:
    value = (option or fallback).lower().replace("jpeg", "jpg")
    return value if value in ("png", "jpg", "webp") else "png"


def _generated(request: Request, seed: int, infotext: str, path: str | None, data: bytes) -> GeneratedImage:
    return GeneratedImage(
        seed=seed,
        subseed=request.subseed,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        infotext=infotext,
        path=path,
        png_bytes=data,
    )


__all__ = ["EaselHost"]
