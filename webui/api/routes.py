"""The A1111-compatible REST adapter: ``/sdapi/v1/*`` → services.

Every handler builds the same typed request the UI builds and calls the same service, so the API and
the browser share one queue and one behaviour. Errors come back as A1111's
``{error, detail, body, errors}`` JSON with a meaningful status, never as a stack trace.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import secrets
import signal
import threading
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image
from pydantic import ValidationError

from webui.api.schemas import (
    ImagesResponse,
    InternalProgressBody,
    InternalProgressResponse,
    PngInfoBody,
    PngInfoResponse,
    ProgressResponse,
    Txt2ImgBody,
)
from webui.container import Services
from webui.domain.generation import GenerationResult, Txt2ImgRequest
from webui.domain.samplers import UnknownSamplerError, sampler_list, scheduler_list
from webui.extensions.api import Tab
from webui.metadata.image_io import read_infotext
from webui.metadata.infotext import parse_infotext, request_fields_from_infotext
from webui.services import limits
from webui.services.cluster_scheduler import QueueFull

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def decode_base64_image(data: str) -> Image.Image:
    """Accept raw base64 or a ``data:image/...;base64,`` URL, as A1111 does."""
    if data.startswith("data:"):
        data = data.split(",", 1)[1] if "," in data else ""
    if data.startswith(("http://", "https://")):
        raise ApiError(422, "ImageError", "image URLs are not fetched; send the image as base64")
    try:
        return limits.active().decode_base64(data)
    except limits.LimitError as exc:
        raise ApiError(exc.status, "LimitError", str(exc)) from exc
    except limits.UploadError as exc:
        raise ApiError(422, "ImageError", f"could not decode the image: {exc}") from exc


def _b64(data: bytes | None) -> str:
    return base64.b64encode(data or b"").decode("ascii")


OVERRIDE_FIELDS = {
    "CLIP_stop_at_last_layers": "clip_skip",
    "sd_model_checkpoint": "checkpoint",
    "sd_vae": "vae",
    "samples_format": "samples_format",
    "randn_source": "randn_source",
    "eta_ddim": "eta",
}


def txt2img_request(
    body: Txt2ImgBody,
    services: Services,
    *,
    cls: type[Any] = Txt2ImgRequest,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Translate A1111's API body into Easel's request (override_settings and infotext applied)."""
    sent = body.model_fields_set
    fields: dict[str, Any] = {}
    parsed: dict[str, object] = {}
    if body.infotext:
        parsed = parse_infotext(body.infotext)
        for key, value in request_fields_from_infotext(parsed).items():
            api_name = {"checkpoint": "sd_model_checkpoint"}.get(key, key)
            if api_name not in sent:
                fields[key] = value
    for name in (
        "prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "batch_size", "n_iter", "steps",
        "cfg_scale", "width", "height", "eta", "seed_resize_from_w", "seed_resize_from_h",
        "clip_best_of", "clip_keep", "refiner_checkpoint", "refiner_switch_at",
    ):  # fmt: skip
        if name in sent or name not in fields:
            value = getattr(body, name)
            if value is not None:
                fields[name] = value
    sampler = (
        body.sampler_name or ("sampler_name" not in sent and fields.get("sampler_name")) or body.sampler_index
    )
    fields["sampler_name"] = sampler or "Euler"
    if body.scheduler:
        fields["scheduler"] = body.scheduler
    opts = services.options.get()
    fields.setdefault("clip_skip", opts.CLIP_stop_at_last_layers)
    fields.setdefault("randn_source", opts.randn_source)
    fields["samples_format"] = opts.samples_format
    for key, value in (body.override_settings or {}).items():
        target = OVERRIDE_FIELDS.get(key)
        if target is not None and value is not None:
            fields[target] = value
    fields["save_images"] = body.save_images
    fields["styles"] = list(body.styles or [])
    fields["tiling"] = bool(body.tiling)
    fields["restore_faces"] = bool(body.restore_faces)
    fields["override_settings"] = request_overrides(body, services)
    mode: Tab = "txt2img" if cls is Txt2ImgRequest else "img2img"
    check_scripts(body, mode, services)
    from webui.api.controlnet_routes import controlnet_units_from_body
    from webui.api.extension_scripts import extension_values

    fields["controlnet_units"] = controlnet_units_from_body(body.alwayson_scripts)
    fields["extension_values"] = extension_values(services, mode, body.alwayson_scripts)
    if body.clip_guidance is not None:
        fields["clip_guidance"] = body.clip_guidance
    if parsed.get("Lora hashes") and services.networks is not None and isinstance(fields.get("prompt"), str):
        # LoRAs renamed since the infotext was written are found by hash.
        fields["prompt"] = services.networks.restore_prompt(fields["prompt"], parsed["Lora hashes"])
    if cls is Txt2ImgRequest:
        from webui.api.img2img_schemas import hires_fields

        fields.update(hires_fields(body))
    fields.update(extra or {})  # img2img: its own fields (cls=Img2ImgRequest)
    try:
        return cls(**{key: value for key, value in fields.items() if key in cls.model_fields})
    except ValidationError as exc:
        raise ApiError(422, "ValidationError", _validation_message(exc)) from exc


# Script titles (lowercase) Easel runs from ``script_name`` / ``alwayson_scripts``.
SELECTABLE_SCRIPTS: dict[str, list[str]] = {"txt2img": [], "img2img": ["sd upscale"]}
ALWAYSON_SCRIPTS: dict[str, list[str]] = {"txt2img": ["controlnet"], "img2img": ["controlnet"]}


def check_scripts(body: Txt2ImgBody, mode: str = "txt2img", services: Any = None) -> None:
    """A1111 answers 422 for a script it does not have; so does Easel, naming the script. Scripts and
    always-on entries of active extensions (``services.extensions``) are available."""
    from webui.api.extension_scripts import extension_script_titles, find_alwayson, find_extension_script

    name = (body.script_name or "").strip().lower()
    builtin = not name or name == "none" or name in SELECTABLE_SCRIPTS[mode]
    if not builtin and find_extension_script(services, mode, name) is None:  # type: ignore[arg-type]
        known = SELECTABLE_SCRIPTS[mode] + extension_script_titles(services, mode)  # type: ignore[arg-type]
        raise ApiError(
            422,
            "ScriptError",
            f"script {body.script_name!r} is not available in Easel; {mode} scripts: "
            f"{', '.join(known) if known else 'none'} (GET /sdapi/v1/scripts lists them)",
        )
    for title in body.alwayson_scripts or {}:
        known = title.lower() in ALWAYSON_SCRIPTS[mode] or find_alwayson(services, mode, title) is not None  # type: ignore[arg-type]
        if not known:
            raise ApiError(
                422,
                "ScriptError",
                f"always-on script {title!r} is not available in Easel; GET /sdapi/v1/scripts lists them",
            )


def request_overrides(body: Txt2ImgBody, services: Services) -> dict[str, Any]:
    """``override_settings`` checked against the options now, so a bad value fails before queueing."""
    overrides = {key: value for key, value in (body.override_settings or {}).items() if value is not None}
    if overrides:
        from webui.services.options import Options

        try:
            Options.model_validate({**services.options.as_dict(), **overrides})
        except ValidationError as exc:
            raise ApiError(422, "ValidationError", _validation_message(exc)) from exc
    return overrides


def keep_overrides(body: Txt2ImgBody, services: Services) -> None:
    """``override_settings_restore_afterwards: false`` keeps the overrides as the saved options."""
    if body.override_settings and not body.override_settings_restore_afterwards:
        services.options.update({k: v for k, v in body.override_settings.items() if v is not None})


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


def result_info(result: GenerationResult, body: dict[str, Any]) -> str:
    request = result.request
    first = result.images[0] if result.images else None
    info: dict[str, Any] = {
        "prompt": request.prompt,
        "all_prompts": [image.prompt for image in result.images],
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [image.negative_prompt for image in result.images],
        "seed": first.seed if first else request.seed,
        "all_seeds": [image.seed for image in result.images],
        "subseed": first.subseed if first else request.subseed,
        "all_subseeds": [image.subseed for image in result.images],
        "subseed_strength": request.subseed_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler_name,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": request.restore_faces,
        "face_restoration_model": result.face_restoration_model,  # None when none ran (see warnings)
        "sd_model_name": result.model_name,
        "sd_model_hash": result.model_hash,
        "sd_vae_name": result.vae_name,
        "sd_vae_hash": result.vae_hash,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": body.get("denoising_strength"),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [image.infotext for image in result.images],
        "styles": body.get("styles") or [],
        "job_timestamp": result.job_timestamp,
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": result.version,
        "warnings": list(result.warnings),
    }
    return json.dumps(info, ensure_ascii=False)


def response_images(result: GenerationResult, body: Txt2ImgBody, services: Services) -> list[str]:
    """The images as base64, then the ControlNet detected maps (as the extension appends them)."""
    if not body.send_images:
        return []
    from webui.api.controlnet_routes import detected_map_images

    return [_b64(image.png_bytes) for image in result.images] + detected_map_images(result, services)


def api_user(http: Request) -> str:
    """Whom an API job belongs to, for the GPU workers' fair shares (``--ray-address``): the basic-auth
    user name when the request carries one, else the caller's address."""
    header = http.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            name = base64.b64decode(header[6:]).decode("utf-8").partition(":")[0]
        except ValueError:
            name = ""
        if name:
            return f"api:{name}"
    return f"api:{http.client.host if http.client else 'unknown'}"


def build_router(services: Services) -> APIRouter:
    settings = services.settings
    security = HTTPBasic(auto_error=False)
    credentials = settings.guard("api")

    def check_auth(creds: HTTPBasicCredentials | None = Depends(security)) -> None:
        if not credentials:
            return
        if creds is not None:
            for user, password in credentials:
                if secrets.compare_digest(creds.username, user) and secrets.compare_digest(
                    creds.password, password
                ):
                    return
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})  # fmt: skip

    router = APIRouter(dependencies=[Depends(check_auth)])
    from webui.api.extension_scripts import mount_extension_routers, submit_script

    generation = services.generation
    models = services.models

    @router.post("/sdapi/v1/txt2img", response_model=ImagesResponse)
    def txt2img(body: Txt2ImgBody, http: Request) -> dict[str, Any]:
        request = txt2img_request(body, services)
        scripted = submit_script(
            services, "txt2img", request, body.script_name, body.script_args, body.force_task_id
        )
        future = scripted or generation.submit_txt2img(request, body.force_task_id, api_user(http))
        result = future.result()
        keep_overrides(body, services)
        images = response_images(result, body, services)
        parameters = body.model_dump()
        return {"images": images, "parameters": parameters, "info": result_info(result, parameters)}

    @router.get("/sdapi/v1/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        return models.sd_models_api()

    @router.post("/sdapi/v1/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        models.refresh()

    networks = services.networks

    @router.get("/sdapi/v1/loras")
    def loras() -> list[dict[str, Any]]:
        return networks.loras_api() if networks is not None else []

    @router.post("/sdapi/v1/refresh-loras")
    def refresh_loras() -> None:
        if networks is not None:
            networks.refresh_loras()

    @router.get("/sdapi/v1/embeddings")
    def embeddings() -> dict[str, Any]:
        if networks is None:
            return {"loaded": {}, "skipped": {}}
        engine = generation.engine()
        model = engine.cache.active if hasattr(engine, "cache") else None
        return networks.describe_embeddings(engine, model)

    @router.post("/sdapi/v1/refresh-embeddings")
    def refresh_embeddings() -> None:
        if networks is not None:
            networks.refresh_embeddings()

    @router.get("/sdapi/v1/sd-vae")
    def sd_vae() -> list[dict[str, Any]]:
        return [{"model_name": p.name, "filename": str(p)} for p in models.vaes()]

    @router.get("/sdapi/v1/options")
    def get_options() -> dict[str, Any]:
        values = services.options.as_dict()
        values["sd_checkpoint_hash"] = _checkpoint_sha256(values.get("sd_model_checkpoint"))
        return values

    def _checkpoint_sha256(title: Any) -> str | None:
        """A1111's read-only ``sd_checkpoint_hash``: the full sha256 when it is known."""
        if not isinstance(title, str) or not title:
            return None
        try:
            return models.find(title).sha256
        except LookupError:
            return None

    @router.post("/sdapi/v1/options")
    def set_options(values: dict[str, Any]) -> None:
        checkpoint = values.get("sd_model_checkpoint")
        current = services.options.get().sd_model_checkpoint
        read_only = ("sd_model_checkpoint", "sd_checkpoint_hash")
        rest = {k: v for k, v in values.items() if k not in read_only}
        if isinstance(rest.get("sd_vae"), str):
            services.models.find_vae(rest["sd_vae"])  # only a VAE from the list (404 otherwise)
        try:
            services.options.update(rest)
        except ValidationError as exc:
            raise ApiError(422, "ValidationError", _validation_message(exc)) from exc
        if checkpoint and checkpoint != current:
            generation.load_model(checkpoint)

    @router.get("/sdapi/v1/samplers")
    def samplers() -> list[dict[str, Any]]:
        return sampler_list()

    @router.get("/sdapi/v1/schedulers")
    def schedulers() -> list[dict[str, Any]]:
        return scheduler_list()

    @router.post("/sdapi/v1/png-info", response_model=PngInfoResponse)
    def png_info(body: PngInfoBody) -> dict[str, Any]:
        if not body.image:
            raise ApiError(404, "ImageError", "Image not found")
        image = decode_base64_image(body.image)
        text, items = read_infotext(image)
        parsed = parse_infotext(text) if text else {}
        return {"info": text or "", "items": items, "parameters": parsed}

    @router.get("/sdapi/v1/progress", response_model=ProgressResponse)
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        snap = generation.progress.snapshot()
        snap.pop("busy", None)
        current = None
        preview = generation.progress.preview
        if not skip_current_image and preview is not None and generation.progress.busy:
            buffer = io.BytesIO()
            preview.save(buffer, format="PNG")
            current = _b64(buffer.getvalue())
        snap["current_image"] = current
        return snap

    @router.post("/sdapi/v1/interrupt")
    def interrupt() -> dict[str, Any]:
        generation.interrupt()
        return {}

    @router.post("/sdapi/v1/skip")
    def skip() -> None:
        generation.skip()

    @router.get("/sdapi/v1/memory")
    def memory() -> dict[str, Any]:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        try:
            pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            pages = free = 0
        engine = generation._engine
        cuda = engine.memory() if engine is not None else {"error": "model not loaded"}
        return {"ram": {"free": free, "used": usage, "total": pages}, "cuda": cuda}

    @router.post("/internal/progress", response_model=InternalProgressResponse)
    def internal_progress(body: InternalProgressBody | None = None) -> dict[str, Any]:
        """A1111's task-aware progress (its web page polls this with the task id it generated with)."""
        body = body or InternalProgressBody()
        state = generation.tasks.state(body.id_task)
        if not state["active"]:
            waiting = "Waiting..."
            if state["queued"]:
                waiting = f"In queue: {state['position']}/{state['queue_size']}"
            return {**state, "id_live_preview": -1, "textinfo": waiting}
        progress = generation.progress
        snap = progress.snapshot()
        answer: dict[str, Any] = {
            **state,
            "progress": snap["progress"],
            "eta": snap["eta_relative"] or None,
            "id_live_preview": body.id_live_preview,
            "textinfo": snap["textinfo"],
        }
        image, step = progress.preview, progress.preview_step
        if body.live_preview and image is not None and step != body.id_live_preview:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=85)
            answer["live_preview"] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
            answer["id_live_preview"] = step
        return answer

    @router.get("/internal/pending-tasks")
    def pending_tasks() -> dict[str, Any]:
        ids = generation.tasks.pending_ids()
        return {"size": len(ids), "tasks": ids}

    @router.get("/internal/ping")
    def ping() -> dict[str, Any]:
        return {}

    if settings.api_server_stop:

        @router.post("/sdapi/v1/server-stop")
        def server_stop() -> str:
            threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            return "Stopping."

    from webui.api.history_routes import add_history_routes
    from webui.api.img2img_routes import add_image_routes
    from webui.api.merge_routes import add_merge_routes
    from webui.api.system_routes import add_system_routes
    from webui.api.training_routes import add_training_routes

    add_merge_routes(router, services)
    add_image_routes(router, services)
    add_system_routes(router, services)
    add_history_routes(router, services)
    add_training_routes(router, services)
    mount_extension_routers(router, services)  # routers of extensions (add_routes) under /ext/<name>
    if services.controlnet is not None:
        from webui.api.controlnet_routes import add_controlnet_routes

        add_controlnet_routes(router, services)
    if services.clip is not None:
        from webui.api.clip_routes import add_clip_routes

        add_clip_routes(router, services)
    from webui.api.extension_routes import add_extension_routes

    add_extension_routes(router, services)

    @router.get("/easel/v1/cluster", tags=["Easel"])
    def cluster() -> dict[str, Any]:
        """The GPU workers (``--ray-address``): alive, models loaded, queue, device, memory."""
        generation = services.generation
        if generation.cluster_factory is None:
            raise ApiError(
                404,
                "NoCluster",
                "Easel runs jobs on this machine only; start it with --ray-address to use workers",
            )
        described: dict[str, Any] = generation.cluster().describe()
        return described

    return router


def install_error_handlers(app: FastAPI) -> None:
    def payload(request: Request, status: int, error: str, detail: str) -> JSONResponse:
        return JSONResponse(
            status_code=status,
            content={"error": error, "detail": detail, "body": "", "errors": detail},
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return payload(request, exc.status, exc.error, exc.detail)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        response = payload(request, 503, "QueueFull", str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return payload(request, 422, "RequestValidationError", "; ".join(parts))

    status_by_name = {
        "ModelNotFoundError": 404,
        "NoModelError": 404,
        "GenerationError": 422,
        "ControlError": 422,  # a ControlNet / adapter that does not fit the checkpoint: a request to change
        "ClipUnavailableError": 409,  # best of N without a CLIP model, as /easel/v1/clip/score answers
        "UploadTooLargeError": 413,  # an upload over --max-upload-bytes (other limits: 422)
        "ModelFileError": 422,  # a corrupt, truncated or unsafe model file named by the request
    }

    async def _known(request: Request, exc: Exception) -> JSONResponse:
        name = type(exc).__name__
        default = 422 if isinstance(exc, ValueError) else 404 if isinstance(exc, LookupError) else 500
        return payload(request, status_by_name.get(name, default), name, str(exc))

    # Domain errors carry user-facing messages: ValueError → 422, LookupError → 404, RuntimeError → 500
    # (load and generation failures; NoModelError → 404).
    for exc_type in (ValueError, LookupError, RuntimeError):
        app.add_exception_handler(exc_type, _known)

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API request failed")
        return payload(request, 500, type(exc).__name__, str(exc))


__all__ = ["ApiError", "UnknownSamplerError", "build_router", "decode_base64_image", "install_error_handlers"]
