"""Run ``python app.py`` as a user does, for tests and benchmarks that talk to it over HTTP.

``running_easel(data_dir, "--api")`` starts it on a free port, waits until ``/easel/v1/startup`` says the
studio is ready (the port answers with a "starting" page long before), yields the base URL and stops the
process at the end. When the app exits early or never gets ready, the error carries its log.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTUP = "/easel/v1/startup"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(data_dir: Path, *flags: str, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``app.py --data-dir data_dir --port P *flags``, logging to ``data_dir/app.log``."""
    port = port or free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "app.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--data-dir", str(data_dir), "--port", str(port), *flags],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}"


def wait_answering(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Until the port answers anything (the starting page counts)."""
    _wait(url, process, log, timeout, ready=False)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    """Until the startup status says ready; an error there (or the process ending) raises with the log."""
    _wait(url, process, log, timeout, ready=True)


def _wait(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float, *, ready: bool) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + STARTUP, timeout=5) as response:
                status = json.loads(response.read())
            if status.get("error"):
                raise RuntimeError(f"the app failed to start: {status['error']}\n{_tail(log)}")
            if status.get("ready") or not ready:
                return
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            wanted = "ready" if ready else "answering"
            raise RuntimeError(f"the app was not {wanted} in {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_easel(data_dir: Path, *flags: str, timeout: float = 180) -> Iterator[str]:
    """The base URL of an Easel started with ``flags`` on ``data_dir``, ready to use; stopped afterwards."""
    process, url = start(data_dir, *flags)
    try:
        wait_ready(url, process, data_dir / "app.log", timeout)
        yield url
    finally:
        stop(process)


def _tail(log: Path, lines: int = 60) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
