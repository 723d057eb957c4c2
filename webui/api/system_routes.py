"""The rest of ``/sdapi/v1``: flags, styles, lists of things Easel has (or has none of), model
unload/reload, scripts, server control, ``/internal/*``, and A1111 endpoints Easel cannot back.

The endpoints Easel cannot back (hypernetworks) answer 501 in A1111's error shape with a
message saying so, so a client shows a clear error instead of guessing.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from importlib import metadata
from typing import Any

from fastapi import APIRouter

from webui.api.extension_scripts import a1111_extensions, alwayson_names, extension_script_titles
from webui.api.extension_scripts import script_info as extension_script_info
from webui.api.routes import ALWAYSON_SCRIPTS, SELECTABLE_SCRIPTS, ApiError

SECRET_FLAGS = ("api_auth", "gradio_auth")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cmd_flags(settings: Any) -> dict[str, Any]:
    """``vars`` of the parsed command line (passwords masked)."""
    from webui.cli import default_cmd_flags

    flags = dict(settings.cmd_flags) if settings.cmd_flags is not None else default_cmd_flags()
    for key in SECRET_FLAGS:
        if flags.get(key):
            flags[key] = "***"
    return flags


def _not_available(what: str) -> ApiError:
    return ApiError(501, "NotImplementedError", f"{what} is not available in Easel.")


def add_system_routes(router: APIRouter, services: Any) -> None:
    settings = services.settings
    generation = services.generation
    models = services.models

    @router.get("/sdapi/v1/cmd-flags")
    def get_cmd_flags() -> dict[str, Any]:
        return cmd_flags(settings)

    @router.get("/sdapi/v1/hypernetworks")
    def hypernetworks() -> list[dict[str, Any]]:
        return []  # Easel does not load hypernetworks

    @router.get("/sdapi/v1/face-restorers")
    def face_restorers() -> list[dict[str, Any]]:
        return [record.api_dict() for record in services.faces.available()] if services.faces else []

    @router.get("/sdapi/v1/realesrgan-models")
    def realesrgan_models() -> list[dict[str, Any]]:
        if services.upscalers is None:
            return []
        return [
            {"name": record.name, "path": str(record.path), "scale": record.scale}
            for record in services.upscalers.available()
            if record.path is not None
        ]

    @router.get("/sdapi/v1/prompt-styles")
    def prompt_styles() -> list[dict[str, Any]]:
        if services.styles is None:
            return []
        return [style.model_dump() for style in services.styles.styles()]

    @router.post("/sdapi/v1/refresh-vae")
    def refresh_vae() -> None:
        models.vaes()  # the VAE folder is scanned on every use; this checks it is readable

    @router.post("/sdapi/v1/unload-checkpoint")
    def unload_checkpoint() -> dict[str, Any]:
        def run() -> None:
            if generation._engine is not None:
                generation._engine.unload()
            models.load_state.loaded_name = None

        generation.submit_call(run).result()  # queued: never under a running job
        return {}

    @router.post("/sdapi/v1/reload-checkpoint")
    def reload_checkpoint() -> dict[str, Any]:
        generation.load_model(None)
        return {}

    @router.get("/sdapi/v1/scripts")
    def scripts() -> dict[str, list[str]]:
        return {
            mode: SELECTABLE_SCRIPTS[mode] + extension_script_titles(services, mode)
            + ALWAYSON_SCRIPTS[mode] + alwayson_names(services, mode)
            for mode in ("txt2img", "img2img")
        }  # fmt: skip

    @router.get("/sdapi/v1/script-info")
    def script_info() -> list[dict[str, Any]]:
        out = []
        for mode in ("txt2img", "img2img"):
            for name in SELECTABLE_SCRIPTS[mode] + ALWAYSON_SCRIPTS[mode]:
                out.append(
                    {
                        "name": name,
                        "is_alwayson": name in ALWAYSON_SCRIPTS[mode],
                        "is_img2img": mode == "img2img",
                        "args": [],
                    }
                )
        return out + extension_script_info(services)

    @router.get("/sdapi/v1/extensions")
    def extensions() -> list[dict[str, Any]]:
        return a1111_extensions(services)

    if getattr(services, "clip", None) is None:  # else webui.api.clip_routes serves it

        @router.post("/sdapi/v1/interrogate")
        def interrogate(body: dict[str, Any] | None = None) -> dict[str, Any]:
            raise _not_available("Interrogation (CLIP / DeepDanbooru captions)")

    unbacked = [
        ("/sdapi/v1/create/hypernetwork", "Creating hypernetworks"),
        ("/sdapi/v1/train/hypernetwork", "Training hypernetworks"),
    ]
    if getattr(services, "training", None) is None:  # else webui.api.training_routes serves them
        unbacked += [
            ("/sdapi/v1/create/embedding", "Creating embeddings"),
            ("/sdapi/v1/train/embedding", "Training embeddings"),
        ]
    for path, what in unbacked:

        def unavailable(body: dict[str, Any] | None = None, what: str = what) -> dict[str, Any]:
            raise _not_available(what)

        name = path.removeprefix("/sdapi/v1/").replace("/", "_")
        router.add_api_route(path, unavailable, methods=["POST"], name=name)

    @router.get("/internal/sysinfo")
    def sysinfo() -> dict[str, Any]:
        return {
            "Platform": platform.platform(),
            "Python": platform.python_version(),
            "Version": generation_version(),
            "Torch": _package_version("torch"),
            "Diffusers": _package_version("diffusers"),
            "Gradio": _package_version("gradio"),
            "CPU": {"model": platform.processor() or platform.machine(), "count": os.cpu_count()},
            "Commandline flags": cmd_flags(settings),
            "Config": services.options.as_dict(),
            "Extensions": a1111_extensions(services),
        }

    if settings.api_server_stop:

        @router.post("/sdapi/v1/server-kill")
        def server_kill() -> None:
            threading.Timer(0.5, lambda: os._exit(0)).start()

        @router.post("/sdapi/v1/server-restart")
        def server_restart() -> None:
            def restart() -> None:
                sys.stdout.flush()
                os.execv(sys.executable, [sys.executable, *sys.argv])

            threading.Timer(0.5, restart).start()


def generation_version() -> str:
    from webui.services.generation import VERSION

    return VERSION


__all__ = ["add_system_routes", "cmd_flags"]
