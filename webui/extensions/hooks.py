"""The always-on extensions' hooks around one generation job.

The generation service calls :meth:`HookRunner.begin` once per job (not for best of N's inner runs), runs
the job with the returned :class:`JobHooks`' ``request``, passes each image through ``image`` before it is
encoded, and hands the result to ``finish``. Hooks run in the manager's order (priority, then name). A hook
that raises is reported through ``manager.fail`` (which disables its extension), the job goes on without
that extension, and the message is added to the result's warnings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from webui.domain.generation import GenerationResult, Img2ImgRequest, Txt2ImgRequest
from webui.extensions.api import Easel, Extension, HookContext, Request, Tab

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


class ExtensionSource(Protocol):
    """What the hooks need of the extension manager."""

    def active(self) -> list[Extension]: ...

    def fail(self, name: str, where: str, exc: BaseException) -> str: ...


def tab_of(request: Request) -> Tab:
    return "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"


class JobHooks:
    """The hooks of one job; extensions that fail in it are left out of its later hooks."""

    def __init__(
        self, source: ExtensionSource, easel: Easel, extensions: Sequence[Extension], request: Request
    ):
        self._source = source
        self._easel = easel
        self._extensions = list(extensions)
        self._failed: set[str] = set()
        self.warnings: list[str] = []
        self.request = request
        self._tab = tab_of(request)
        self.request = self._process(request)

    def _context(self, extension: Extension, request: Request) -> HookContext:
        values = request.extension_values.get(extension.name, {})
        return HookContext(extension=extension.name, tab=self._tab, values=values, easel=self._easel)

    def _report(self, extension: Extension, where: str, exc: BaseException) -> None:
        self._failed.add(extension.name)
        message = self._source.fail(extension.name, where, exc)
        self.warnings.append(message)

    def _live(self, hooks_of: str) -> list[Extension]:
        return [e for e in self._extensions if e.name not in self._failed and getattr(e, hooks_of)]

    def _process(self, request: Request) -> Request:
        kind = type(request)
        for extension in self._live("process_hooks"):
            context = self._context(extension, request)
            current = request
            try:
                for hook in extension.process_hooks:
                    changed = hook(context, current)
                    if changed is None:
                        continue
                    if not isinstance(changed, kind):
                        raise TypeError(
                            f"a process hook returned {type(changed).__name__}, not {kind.__name__}"
                        )
                    current = changed
            except Exception as exc:  # the job goes on without this extension
                self._report(extension, "a process hook", exc)
                continue
            request = current
        return request

    def image(self, image: Image.Image) -> Image.Image:
        """``image`` through every image hook, before it is encoded and saved."""
        for extension in self._live("image_hooks"):
            context = self._context(extension, self.request)
            current = image
            try:
                for hook in extension.image_hooks:
                    changed = hook(context, current)
                    if changed is None:
                        continue
                    if not hasattr(changed, "size") or not hasattr(changed, "mode"):
                        raise TypeError(f"an image hook returned {type(changed).__name__}, not an image")
                    current = changed
            except Exception as exc:
                self._report(extension, "an image hook", exc)
                continue
            image = current
        return image

    def finish(self, result: GenerationResult) -> GenerationResult:
        """The result through every postprocess hook, with the warnings of failed hooks added."""
        for extension in self._live("postprocess_hooks"):
            context = self._context(extension, self.request)
            current = result
            try:
                for hook in extension.postprocess_hooks:
                    changed = hook(context, current)
                    if changed is None:
                        continue
                    if not isinstance(changed, GenerationResult):
                        raise TypeError(f"a postprocess hook returned {type(changed).__name__}, not a result")
                    current = changed
            except Exception as exc:
                self._report(extension, "a postprocess hook", exc)
                continue
            result = current
        if self.warnings:
            result = result.model_copy(update={"warnings": [*result.warnings, *self.warnings]})
        return result


class HookRunner:
    """Given to the generation service as ``extension_hooks``."""

    def __init__(self, source: ExtensionSource, easel: Easel) -> None:
        self.source = source
        self.easel = easel

    def begin(self, request: Txt2ImgRequest | Img2ImgRequest) -> JobHooks:
        extensions = [e for e in self.source.active() if _has_hooks(e)]
        return JobHooks(self.source, self.easel, extensions, request)


def _has_hooks(extension: Extension) -> bool:
    return bool(extension.process_hooks or extension.image_hooks or extension.postprocess_hooks)


__all__ = ["ExtensionSource", "HookRunner", "JobHooks", "tab_of"]
