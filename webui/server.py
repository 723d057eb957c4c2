"""Compose the web server: the Gradio UI and/or the REST API on one FastAPI app, served by uvicorn."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from webui.container import Services
from webui.settings import Settings
from webui.ui.gradio_import import import_gradio

log = logging.getLogger(__name__)


def build_app(services: Services, stage: Callable[[str], None] = lambda _: None) -> Any:
    """The FastAPI app: the API, the MCP server and the UI as the settings ask. ``stage`` hears each step."""
    stage("preparing the API")
    from fastapi import FastAPI

    from webui.api.middleware import install_middleware
    from webui.api.routes import build_router, install_error_handlers

    settings = services.settings
    app = FastAPI(title="Easel", version="0.1.0", docs_url="/docs")
    install_error_handlers(app)
    install_middleware(app, settings)
    if settings.api or settings.nowebui:
        app.include_router(build_router(services))
    if settings.mcp:  # before the UI: its mount at "/" would answer every path
        stage("starting the MCP server")
        app = _mount_mcp(app, services)
    if not settings.nowebui:
        stage("importing Gradio")
        gr = import_gradio()

        from webui.ui.app import build_ui

        stage("building the studio")
        blocks = build_ui(services)
        stage("mounting the studio")
        auth = settings.guard("gradio") or None
        app = gr.mount_gradio_app(
            app,
            blocks,
            path="/",
            auth=auth,
            allowed_paths=_served_paths(services),
            max_file_size=settings.max_upload_bytes,  # an upload over it is refused with 413
            **_launch_kwargs(),
        )
        _check_file_inputs(blocks)
    _guard(app, settings)
    return app


def _guard(app: Any, settings: Settings) -> None:
    """Basic auth on every REST path (API, docs, MCP, extension routes) once any credentials are set; the UI
    has Gradio's login with the same rule (``Settings.guard``). Without any, ``--listen`` warns."""
    from webui.api.middleware import BasicAuthGate

    credentials = settings.guard("api")
    if credentials:
        app.add_middleware(BasicAuthGate, credentials=credentials)
    elif settings.listen and not settings.guard("gradio"):
        log.warning(
            "--listen without --gradio-auth or --api-auth: anyone who can reach this machine can use Easel, "
            "see every image in outputs/ and change its settings; add --gradio-auth user:password"
        )


def _check_file_inputs(blocks: Any) -> None:
    """Make Gradio check the file paths a client sends, as it does for an app it launched itself.

    Gradio refuses a file input whose path was not uploaded through it (and an output outside the served
    folders) only once its Blocks has launched; a mounted Blocks never launches, so without this a Gradio API
    client could name any file on the server (``{"path": "/home/user/..."}``) as an image input.
    """
    blocks.has_launched = True


def _mount_mcp(app: Any, services: Services) -> Any:
    """Gradio's MCP server over Easel's tools (``webui.ui.mcp_tools``) at ``/mcp``.

    The REST gate guards it (``_guard``): agents send HTTP basic credentials.
    """
    gr = import_gradio()  # first: webui.ui imports gradio

    from webui.ui.mcp_tools import MCP_MOUNT, build_mcp_blocks

    blocks = build_mcp_blocks(services)
    try:
        app = gr.mount_gradio_app(app, blocks, path=MCP_MOUNT, mcp_server=True, footer_links=[])
    except ImportError as exc:
        raise SystemExit("--mcp needs the mcp package (1.x): pip install -r requirements.txt") from exc
    if blocks.mcp_server_obj is None:
        raise SystemExit(f"--mcp: {blocks.mcp_error or 'the MCP server could not start'}")
    _check_file_inputs(blocks)
    return app  # guarded with the REST paths (``_guard``)


def _served_paths(services: Services) -> list[str]:
    """Folders the UI shows files from: outputs, History's and the network cards' thumbnails."""
    settings = services.settings
    return [
        str(settings.outputs_path.resolve()),
        str((settings.cache_dir / "history-thumbnails").resolve()),
        str((settings.cache_dir / "thumbnails").resolve()),  # LoRA / embedding card thumbnails
    ]


def _launch_kwargs() -> dict[str, Any]:
    from webui.ui.app import launch_kwargs

    return launch_kwargs()


def serve(settings: Settings, build_services: Callable[[], Services], *, preload: bool = True) -> None:
    """Serve until stopped.

    The port answers within a second with a page that says what Easel is doing (``webui.starting``);
    meanwhile the services are built (the model folders read: the first time, a large LoRA library's
    headers) and then the app, which takes over when ready. The checkpoint starts loading after that.
    """
    import threading

    import uvicorn

    from webui.starting import StartingApp

    front = StartingApp()
    where = f"http://{settings.host}:{settings.server_port}"
    server = uvicorn.Server(
        uvicorn.Config(front, host=settings.host, port=settings.server_port, log_level="warning")
    )
    failure: list[BaseException] = []

    def build_then_hand_over() -> None:
        try:
            front.stage("reading the model folders")
            services = build_services()
            app = build_app(services, stage=front.stage)
            front.stage("starting the queue")
            front.hand_over(app)
        except BaseException as exc:  # SystemExit from a bad flag too: the server must stop, not hang
            failure.append(exc)
            front.fail(str(exc) or type(exc).__name__)
            log.error("Easel could not start: %s", exc, exc_info=not isinstance(exc, SystemExit))
            server.should_exit = True
            return
        log.info("Easel is serving %s at %s", "the API" if settings.nowebui else "the UI", where)
        print(f"Easel: ready at {where}" + ("/docs for the API" if settings.nowebui else ""), flush=True)
        if settings.mcp:
            from webui.ui.mcp_tools import mcp_urls

            print("Easel: MCP server for agents at {} (SSE: {})".format(*mcp_urls(where)), flush=True)
        if services.history is not None:
            services.history.sync_in_background()  # images added or removed while Easel was not running
        if preload:
            services.preload()

    def announce_then_build() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.should_exit:
            return
        print(f"Easel: open {where} (the page shows progress until the studio is ready)", flush=True)
        build_then_hand_over()

    threading.Thread(target=announce_then_build, name="easel-start", daemon=True).start()
    server.run()
    if failure:
        error = failure[0]
        raise error if isinstance(error, SystemExit) else SystemExit(f"Easel could not start: {error}")
