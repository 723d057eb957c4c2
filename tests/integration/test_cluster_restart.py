"""A front restart with jobs queued (``--ray-address local``, one CPU worker, the tiny SD 1.5): the front
(and with it its private Ray) is killed with ``kill -9`` while one job runs and two wait; started again on
the same data dir, it runs them from its journal and saves each image once, with the bytes the jobs give
on a single machine, and no temp file is left."""

from __future__ import annotations

import base64
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from webui.container import build_services
from webui.settings import Settings

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
JOBS = [
    {"prompt": f"a red circle {n}", "width": 64, "height": 64, "steps": 30, "seed": 100 + n,
     "sampler_name": "Euler", "save_images": True}
    for n in range(3)
]  # fmt: skip


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(data: Path, port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "app.py", "--nowebui", "--port", str(port), "--data-dir", str(data),
        "--ray-address", "local", "--workers", "1",
    ]  # fmt: skip
    log = open(data / f"front-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 - the process keeps it
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_workers(port: int, front: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert front.poll() is None, "the front exited"
        try:
            page = httpx.get(f"http://127.0.0.1:{port}/easel/v1/cluster", timeout=5).json()
            if page["workers"] and all(w["alive"] for w in page["workers"]):
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError("the workers did not start")


def _journal(data: Path) -> int:
    path = data / "cluster-queue.sqlite3"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def _kill(front: subprocess.Popen[bytes]) -> None:
    """The front and everything it started (its private Ray) killed at once, as a crash or power cut."""
    os.killpg(front.pid, signal.SIGKILL)
    front.wait(30)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, tiny_model_files: dict[str, Path]) -> list[bytes]:
    from tests.conftest import _link_or_copy
    from webui.server import build_app

    data = tmp_path_factory.mktemp("single")
    _link_or_copy(tiny_model_files["sd15_single"], data / "models" / "Stable-diffusion" / "tiny.safetensors")
    services = build_services(Settings(data_dir=data, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as client:
        made = [
            base64.b64decode(client.post("/sdapi/v1/txt2img", json=job).json()["images"][0]) for job in JOBS
        ]
    services.generation.shutdown()
    return made


def test_a_front_killed_with_jobs_queued_finishes_them_after_its_restart(
    tmp_path: Path, tiny_model_files: dict[str, Path], single: list[bytes]
) -> None:
    from tests.conftest import _link_or_copy

    data = tmp_path / "front"
    _link_or_copy(tiny_model_files["sd15_single"], data / "models" / "Stable-diffusion" / "tiny.safetensors")
    port = _port()
    front = _start(data, port)
    try:
        _wait_for_workers(port, front)
        errors: list[BaseException] = []

        def post(job: dict[str, object]) -> None:
            try:
                httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json=job, timeout=300)
            except httpx.HTTPError as error:  # the front is killed under it
                errors.append(error)

        for job in JOBS:
            threading.Thread(target=post, args=(job,), daemon=True).start()
            time.sleep(0.3)  # queued in this order
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            step = httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/progress", timeout=5).json()["state"]
            if _journal(data) == 3 and step["sampling_step"] >= 2:
                break
            time.sleep(0.1)
        assert _journal(data) == 3, "the jobs were not all journaled while the first ran"
        assert not list((data / "outputs").rglob("*.png"))
    finally:
        _kill(front)

    front = _start(data, port)
    try:
        deadline = time.monotonic() + 240
        while _journal(data) and time.monotonic() < deadline:
            assert front.poll() is None, "the restarted front exited"
            time.sleep(0.5)
        assert _journal(data) == 0, "the journal's jobs did not finish after the restart"
        page = httpx.get(f"http://127.0.0.1:{port}/easel/v1/cluster", timeout=10).json()
        assert page["recovered"] == 3
    finally:
        _kill(front)
    saved = sorted((data / "outputs").rglob("*.png"))
    assert len(saved) == 3  # each image once
    by_seed = {int(path.stem.split("-")[1]): path.read_bytes() for path in saved}
    assert [by_seed[job["seed"]] for job in JOBS] == single  # type: ignore[index]
    assert not [p for p in (data / "outputs").rglob("*") if p.name.startswith(".easel-tmp")]
