"""The public surface of Easel's extension API, version 1: what an extension may register and call.

An extension is a folder ``extensions/<name>/`` with an ``extension.toml`` manifest whose ``entry``
(``"module:function"``, the module a file in that folder) is called once with an :class:`Extension`:

    def setup(ext: Extension) -> None:
        ext.add_tab("Hello", build_hello_tab)
        ext.on_process(add_my_field)

Everything an extension does goes through that object: it registers tabs, accordions, scripts, hooks,
preprocessors, upscalers, samplers, infotext fields and API routes, and it reaches Easel's features
through ``ext.easel`` (an :class:`Easel`). Nothing else of ``webui`` is part of the surface: bundled
extensions import only ``webui.extensions`` (a test keeps it so), and this module is versioned by
:data:`EXTENSION_API_VERSION`. Gradio is imported only by the functions that build widgets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from webui.domain.generation import GeneratedImage, GenerationResult, Img2ImgRequest, Txt2ImgRequest

if TYPE_CHECKING:
    from PIL import Image

EXTENSION_API_VERSION = 1
"""The version of this surface. A manifest's ``api`` must not be newer; a change that breaks an extension
written for version N makes this N + 1 (and the loader refuses older extensions with a message)."""

MANIFEST_FILE = "extension.toml"
Tab = Literal["txt2img", "img2img"]
Request = Txt2ImgRequest | Img2ImgRequest
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")  # \Z: no trailing newline

__all__ = [
    "EXTENSION_API_VERSION",
    "MANIFEST_FILE",
    "CheckpointInfo",
    "Easel",
    "Extension",
    "ExtensionError",
    "GeneratedImage",
    "GenerationResult",
    "HookContext",
    "Img2ImgRequest",
    "Manifest",
    "Request",
    "Script",
    "ScriptRun",
    "Tab",
    "Txt2ImgRequest",
]


class ExtensionError(RuntimeError):
    """Something an extension did (or its manifest says) that Easel cannot accept; the message names it."""


class ExtensionInputError(ExtensionError, ValueError):
    """A script refused the values it was given (its ``ValueError``): the user's to fix, the extension stays
    on; the API answers 422."""


@dataclass(frozen=True)
class Manifest:
    """``extension.toml``: name, title, version, description, entry, api, priority.

    ``name`` is the extension's id (folder-safe: lowercase letters, digits, ``-``, ``_``); it names its
    routes (``/ext/<name>/``), its data folder and its enabled state in ``config.json``. Hooks run in
    ``priority`` order (lower first), then by name.
    """

    name: str
    title: str
    version: str
    description: str
    entry: str  # "module:function", module relative to the extension's folder
    api: int  # the extension API version it was written for
    priority: int = 100


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint as extensions see it (the titles are those of the checkpoint dropdown and the API)."""

    title: str  # "name.safetensors [hash]" as in /sdapi/v1/sd-models
    name: str  # file name relative to models/Stable-diffusion
    family: str  # "sd15", "sd2", "sd2-v", "sdxl", ...
    path: Path
    hash: str | None  # first 10 hex of the file's sha256 when known


@dataclass
class HookContext:
    """What an always-on hook receives besides the request or result.

    ``values`` are the widgets of the extension's accordion for this job, by the names its ``build``
    returned (from the UI), or the ``alwayson_scripts[<name or title>].args`` mapping (from the API);
    empty when the extension has no accordion. ``tab`` is ``"txt2img"`` or ``"img2img"``.
    """

    extension: str
    tab: Tab
    values: Mapping[str, Any]
    easel: Easel


class Easel(Protocol):
    """Easel's features as an extension may use them. Calls are synchronous and thread-safe.

    ``txt2img`` / ``img2img`` run one job through the normal path (always-on hooks, saving, infotext,
    history). Called from inside a script's ``run`` they run at once in the job that runs the script;
    called from elsewhere (a tab's button, a route) they wait their turn in the generation queue.
    """

    def txt2img(self, request: Txt2ImgRequest) -> GenerationResult: ...

    def img2img(self, request: Img2ImgRequest) -> GenerationResult: ...

    def checkpoints(self) -> list[CheckpointInfo]: ...

    def refresh_checkpoints(self) -> list[CheckpointInfo]: ...

    def vaes(self) -> list[str]: ...

    def samplers(self) -> list[str]: ...

    def schedulers(self) -> list[str]: ...

    def upscalers(self) -> list[str]: ...

    def options(self) -> dict[str, Any]: ...

    def parse_infotext(self, text: str) -> dict[str, Any]: ...

    def save_grid(self, image: Image.Image, request: Request, infotext: str) -> GeneratedImage:
        """Save a grid as A1111 does (``outputs/<mode>-grids/<date>/``, option ``grid_save``) with
        ``infotext`` embedded; the returned image carries the encoded bytes for the gallery and the API."""
        ...

    def encode_image(self, image: Image.Image, request: Request, infotext: str, seed: int) -> GeneratedImage:
        """An image made by a script (not by a job), saved like a job's image (``request.save_images``)."""
        ...

    def clip_score(self, image: Image.Image, prompt: str) -> float | None:
        """The image's CLIP score for ``prompt`` with the selected CLIP model; ``None`` when there is none."""
        ...

    def interrogate(self, image: Image.Image) -> str:
        """A prompt describing ``image`` (CLIP interrogation with the selected CLIP model, as the img2img
        tab's Interrogate button); raises :class:`ExtensionError` when there is no usable CLIP model."""
        ...

    def set_progress(self, text: str, fraction: float | None = None) -> None:
        """The progress line a script shows between its jobs (e.g. ``"X/Y/Z plot: cell 3 of 9"``)."""
        ...

    @property
    def interrupted(self) -> bool:
        """True once the user pressed Interrupt: a script stops making further jobs."""
        ...

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
        """Merge checkpoints (titles) into ``models/Stable-diffusion``; returns the new checkpoint's title."""
        ...


@dataclass
class ScriptRun:
    """A selected script's job (A1111's ``p``): the tab's or the API's request, and Easel.

    ``request`` is the request as the user set it (the script makes copies with ``model_copy(update=...)``
    and runs them with ``easel.txt2img`` / ``easel.img2img``, or with :meth:`generate`).
    """

    request: Request
    easel: Easel
    tab: Tab

    def generate(self, request: Request | None = None) -> GenerationResult:
        """Run ``request`` (default: this run's) as one job of the same tab."""
        request = request if request is not None else self.request
        if isinstance(request, Img2ImgRequest):
            return self.easel.img2img(request)
        return self.easel.txt2img(request)


class Script:
    """A selectable script (A1111's shape): shown in the tab's Script dropdown, and run by ``script_name``.

    ``ui(tab)`` builds the script's widgets (called inside the Script area of that tab, only while the
    UI is built) and returns them in order; their values are ``run``'s ``*args``, and over the API
    ``script_args`` gives the same list, so A1111's argument layouts carry over. ``run`` returns the
    result to show (images, infotexts); a script that raises fails its job with its message.
    """

    title: str = ""
    tabs: tuple[Tab, ...] = ("txt2img", "img2img")

    def ui(self, tab: Tab) -> list[Any]:
        return []

    def api_defaults(self, tab: Tab) -> list[Any]:
        """``script_args`` when the API sends fewer values than ``ui`` has widgets (A1111's defaults)."""
        return []

    def run(self, p: ScriptRun, *args: Any) -> GenerationResult:
        raise NotImplementedError(f"script {self.title!r} has no run()")


ProcessHook = Callable[[HookContext, Request], Request | None]
PostprocessHook = Callable[[HookContext, GenerationResult], GenerationResult | None]
ImageHook = Callable[[HookContext, "Image.Image"], "Image.Image | None"]
Preprocessor = Callable[..., "Image.Image"]  # (image, resolution, **params) -> control map
Upscaler = Callable[["Image.Image", float], "Image.Image"]  # (image, scale) -> image


@dataclass
class AccordionSpec:
    title: str
    build: Callable[[Tab], dict[str, Any]]
    tabs: tuple[Tab, ...]
    # The widget names an API ``alwayson_scripts[...].args`` *list* maps onto, in order: the ones the
    # extension declared (``add_accordion(api_args=...)``), else those ``build`` returned, in its order, as
    # recorded when the UI built the accordion. (A dict of ``args`` by widget name always works.)
    api_args: tuple[str, ...] = ()


@dataclass
class InfotextField:
    key: str  # the infotext key, e.g. "Hello greeting"
    component: str  # the name of one of the extension's accordion widgets it restores


@dataclass
class SamplerSpec:
    name: str  # as shown and as sent in sampler_name
    scheduler_class: str  # a diffusers scheduler class name, e.g. "EulerDiscreteScheduler"
    config: dict[str, Any]  # keyword overrides of that scheduler's config


@dataclass
class Extension:
    """The registration object ``setup`` receives; the core reads what was registered from it."""

    manifest: Manifest
    path: Path  # the extension's folder
    data_dir: Path  # a folder the extension may write to (created on first use by the extension)
    easel: Easel
    tabs: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    accordions: list[AccordionSpec] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    process_hooks: list[ProcessHook] = field(default_factory=list)
    postprocess_hooks: list[PostprocessHook] = field(default_factory=list)
    image_hooks: list[ImageHook] = field(default_factory=list)
    preprocessors: dict[str, Preprocessor] = field(default_factory=dict)
    upscalers: dict[str, Upscaler] = field(default_factory=dict)
    samplers: list[SamplerSpec] = field(default_factory=list)
    infotext_fields: list[InfotextField] = field(default_factory=list)
    routers: list[Any] = field(default_factory=list)  # fastapi.APIRouter, mounted at /ext/<name>

    @property
    def name(self) -> str:
        return self.manifest.name

    def add_tab(self, title: str, build: Callable[[], None]) -> None:
        """A top-level tab; ``build()`` creates its widgets (it runs inside ``gr.Tab(title)``)."""
        self.tabs.append((_text(title, "tab title"), build))

    def add_accordion(
        self,
        title: str,
        build: Callable[[Tab], dict[str, Any]],
        tabs: Sequence[Tab] = ("txt2img", "img2img"),
        api_args: Sequence[str] = (),
    ) -> None:
        """A collapsed accordion in txt2img/img2img; ``build(tab)`` returns its widgets by name, and their
        values reach this extension's hooks as ``HookContext.values``. ``api_args``: the widget names that
        an API ``alwayson_scripts`` args *list* fills, in order (default: the order ``build`` returns)."""
        names = tuple(_text(name, "api_args name") for name in api_args)
        self.accordions.append(AccordionSpec(_text(title, "accordion title"), build, _tabs(tabs), names))

    def add_script(self, script: Script) -> None:
        _text(script.title, "script title")
        _tabs(script.tabs)
        self.scripts.append(script)

    def on_process(self, hook: ProcessHook) -> None:
        """Before a job: return a changed copy of the request (or ``None`` to keep it)."""
        self.process_hooks.append(hook)

    def on_postprocess(self, hook: PostprocessHook) -> None:
        """After a job: return a changed copy of the result (or ``None`` to keep it)."""
        self.postprocess_hooks.append(hook)

    def on_postprocess_image(self, hook: ImageHook) -> None:
        """Each image before it is encoded and saved: return a changed image (or ``None`` to keep it)."""
        self.image_hooks.append(hook)

    def add_preprocessor(self, name: str, preprocessor: Preprocessor) -> None:
        """A ControlNet preprocessor (``module``): ``preprocessor(image, resolution, **params)`` -> map."""
        self.preprocessors[_text(name, "preprocessor name")] = preprocessor

    def add_upscaler(self, name: str, upscaler: Upscaler) -> None:
        """An upscaler listed with the others (Extras, hires fix, SD upscale): ``upscaler(image, scale)``."""
        self.upscalers[_text(name, "upscaler name")] = upscaler

    def add_sampler(self, name: str, scheduler_class: str, config: Mapping[str, Any] | None = None) -> None:
        self.samplers.append(SamplerSpec(_text(name, "sampler name"), scheduler_class, dict(config or {})))

    def add_infotext_field(self, key: str, component: str) -> None:
        """``key: value`` that a hook writes into the infotext and PNG Info / paste restores into the
        accordion widget named ``component``."""
        self.infotext_fields.append(InfotextField(_text(key, "infotext key"), component))

    def add_routes(self, router: Any) -> None:
        """A ``fastapi.APIRouter``; its paths are served under ``/ext/<name>``."""
        self.routers.append(router)


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ExtensionError(f"{what} must be a non-empty string, got {value!r}")
    return value.strip()


def _tabs(tabs: Sequence[str]) -> tuple[Tab, ...]:
    result: list[Tab] = []
    for tab in tabs:
        if tab not in ("txt2img", "img2img"):
            raise ExtensionError(f"unknown tab {tab!r}: use 'txt2img' or 'img2img'")
        result.append(tab)  # type: ignore[arg-type]
    if not result:
        raise ExtensionError("name at least one tab: 'txt2img' or 'img2img'")
    return tuple(result)
