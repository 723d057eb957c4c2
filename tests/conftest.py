"""Shared fixtures: tiny real-architecture checkpoints written in real layouts, and wired services."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Tests run in parallel workers (pytest -n): one OpenMP thread per process, set before torch loads and
    # inherited by the apps and trainers the tests start. Two processes with two spinning OpenMP threads
    # each on two cores run several times slower than one after the other; with one thread each, faster.
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest

from webui.ui.gradio_import import skip_stub_writing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
skip_stub_writing()  # the tests import Gradio as app.py does


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny SD 1.5 as a diffusers folder and as an A1111 single file, a tiny SDXL single file and a tiny
    SDXL refiner single file."""
    from diffusers import StableDiffusionPipeline

    from tests.fixtures.tiny_models import (
        tiny_sd15_components,
        tiny_sdxl_components,
        tiny_sdxl_refiner_components,
    )
    from webui.runtime.ldm_layout import diffusers_to_ldm_state_dict, save_single_file

    root = tmp_path_factory.mktemp("tiny-models")
    components = tiny_sd15_components()
    folder = root / "tiny-sd15-diffusers"
    StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(folder)
    modules = ("unet", "vae", "text_encoder", "text_encoder_2")

    def single_file(name: str, parts: dict[str, object], family: str) -> Path:
        state = diffusers_to_ldm_state_dict(**{k: v for k, v in parts.items() if k in modules}, family=family)
        return save_single_file(root / name, state)

    return {
        "sd15_folder": folder,
        "sd15_single": single_file("tiny-sd15.safetensors", components, "sd1"),
        "sdxl_single": single_file("tiny-sdxl.safetensors", tiny_sdxl_components(), "sdxl"),
        "sdxl_refiner": single_file(
            "tiny-sdxl-refiner.safetensors", tiny_sdxl_refiner_components(), "sdxl-refiner"
        ),
    }


def _link_or_copy(source: Path, target: Path) -> None:
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


@pytest.fixture
def data_dir(tmp_path: Path, tiny_model_files: dict[str, Path]) -> Path:
    """A fresh Easel data dir whose models/Stable-diffusion holds the tiny SD 1.5 (file and folder)."""
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    _link_or_copy(tiny_model_files["sd15_single"], checkpoints / "tiny-sd15.safetensors")
    _link_or_copy(tiny_model_files["sd15_folder"], checkpoints / "tiny-sd15-diffusers")
    return tmp_path


@pytest.fixture
def services(data_dir: Path) -> Iterator[object]:
    from webui.container import build_services
    from webui.settings import Settings

    built = build_services(Settings(data_dir=data_dir, preload_model=False))
    yield built
    built.generation.shutdown()


@pytest.fixture(scope="session")
def controlnet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random ControlNets that fit the tiny checkpoints: an SD 1.5 one as an original-layout single file
    and (other weights) as a diffusers folder, and an SDXL one as a single file."""
    from tests.fixtures.controlnet_files import (
        tiny_sd15_controlnet,
        tiny_sdxl_controlnet,
        write_folder,
        write_ldm_file,
    )

    root = tmp_path_factory.mktemp("controlnets")
    return {
        "ldm": write_ldm_file(tiny_sd15_controlnet(), root / "control_tiny_sd15_edges.safetensors"),
        "folder": write_folder(tiny_sd15_controlnet(seed=99), root / "tiny-folder-cn"),
        "sdxl": write_ldm_file(tiny_sdxl_controlnet(), root / "control_tiny_sdxl.safetensors"),
    }


@pytest.fixture(scope="session")
def face_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The face detector (``detection_Resnet50_Final.pth``) and a RestoreFormer, random weights."""
    from tests.fixtures.face_models import write_detector, write_restoreformer

    root = tmp_path_factory.mktemp("face-models")
    return {
        "detector": write_detector(root / "detection_Resnet50_Final.pth"),
        "restoreformer": write_restoreformer(root / "RestoreFormer.pth"),
    }


@pytest.fixture
def cn_services(services: Any, data_dir: Path, controlnet_files: dict[str, Path]) -> Any:
    """``services`` with the tiny ControlNets installed: the SD 1.x single file, a diffusers folder
    (``tiny-folder-cn``) and the SDXL single file."""
    target = data_dir / "models" / "ControlNet"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(controlnet_files["ldm"], target / controlnet_files["ldm"].name)
    shutil.copytree(controlnet_files["folder"], target / "tiny-folder-cn")
    shutil.copy(controlnet_files["sdxl"], target / controlnet_files["sdxl"].name)
    services.controlnet.refresh()
    return services


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A local HTTP server for ``tmp_path/served`` (downloads without the network): (base URL, folder,
    request paths seen)."""
    served = tmp_path / "served"
    served.mkdir()
    seen: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"requests": seen})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, seen
    finally:
        server.shutdown()
        server.server_close()
