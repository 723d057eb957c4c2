"""The front that answers while Easel starts (``webui.starting``), driven as uvicorn drives it: over ASGI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app_process import ROOT, free_port
from webui.starting import STATUS_PATH, StartingApp


class Loop:
    """An event loop in a thread, like the server's; ``run`` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def close(self) -> None:
        async def cancel_the_rest() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Served:
    """A StartingApp whose lifespan runs on its own loop, as uvicorn runs it."""

    def __init__(self) -> None:
        self.front = StartingApp()
        self.loop = Loop()
        self.to_front: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_front: list[dict[str, Any]] = []

        async def begin() -> None:
            async def send(message: dict[str, Any]) -> None:
                self.from_front.append(message)

            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
            self.lifespan = asyncio.ensure_future(self.front(scope, self.to_front.get, send))
            await self.to_front.put({"type": "lifespan.startup"})
            while not self.from_front:
                await asyncio.sleep(0.01)

        self.loop.run(begin())

    def request(
        self, path: str, *, method: str = "GET", accept: str = "*/*"
    ) -> tuple[int, dict[str, str], bytes]:
        async def call() -> tuple[int, dict[str, str], bytes]:
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": method,
                "path": path,
                "headers": [(b"accept", accept.encode())],
                "query_string": b"",
            }
            await self.front(scope, receive, send)
            start = sent[0]
            headers = {k.decode(): v.decode() for k, v in start["headers"]}
            return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])

        return self.loop.run(call())

    def websocket(self, path: str) -> list[dict[str, Any]]:
        async def call() -> list[dict[str, Any]]:
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return {"type": "websocket.connect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            await self.front({"type": "websocket", "path": path, "headers": []}, receive, send)
            return sent

        return self.loop.run(call())

    def shut_down(self) -> list[dict[str, Any]]:
        async def end() -> None:
            await self.to_front.put({"type": "lifespan.shutdown"})
            await asyncio.wait_for(self.lifespan, 10)

        self.loop.run(end())
        return self.from_front


class InnerApp:
    """The real app's stand-in: records its lifespan and answers every request with its path."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.events.append("startup")
                    scope["state"]["queue"] = "running"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = f"inner {scope['path']}".encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def served() -> Iterator[Served]:
    serving = Served()
    yield serving
    serving.loop.close()


def test_answers_at_once_while_starting_with_a_page_an_api_error_and_a_status(served: Served) -> None:
    served.front.stage("importing Gradio")

    status, headers, body = served.request("/", accept="text/html,application/xhtml+xml")
    assert status == 503 and headers["retry-after"] == "2" and headers["cache-control"] == "no-store"
    page = body.decode()
    assert "Easel is starting" in page and "importing Gradio" in page and STATUS_PATH in page

    status, headers, body = served.request("/sdapi/v1/txt2img", method="POST", accept="application/json")
    assert status == 503 and headers["content-type"] == "application/json" and "retry-after" in headers
    error = json.loads(body)
    assert error["error"] == "ServiceUnavailable"  # A1111's error shape, like every other API error
    assert "importing Gradio" in error["detail"] and STATUS_PATH in error["detail"]

    status, _, body = served.request(STATUS_PATH)
    assert status == 200
    assert json.loads(body) | {"seconds": 0} == {
        "ready": False,
        "stage": "importing Gradio",
        "seconds": 0,
        "error": None,
    }
    assert served.websocket("/queue/join") == [
        {"type": "websocket.close", "code": 1013, "reason": "Easel is starting"}
    ]


def test_hand_over_starts_the_real_apps_lifespan_then_forwards_everything(served: Served) -> None:
    inner = InnerApp()
    served.front.hand_over(inner)  # from another thread, as serve() does
    assert inner.events == ["startup"] and served.front.ready

    assert served.request("/", accept="text/html") == (200, {"content-type": "text/plain"}, b"inner /")
    assert served.request("/sdapi/v1/options")[2] == b"inner /sdapi/v1/options"
    status = json.loads(served.request(STATUS_PATH)[2])
    assert status["ready"] is True and status["stage"] == "ready"

    messages = served.shut_down()
    assert inner.events == ["startup", "shutdown"]  # the real app's shutdown runs with the server's
    assert [m["type"] for m in messages] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_a_failed_start_is_said_on_the_page_and_in_the_api_error(served: Served) -> None:
    served.front.fail("--mcp needs the mcp package (1.x): pip install -r requirements.txt")
    status = json.loads(served.request(STATUS_PATH)[2])
    assert status["ready"] is False and "mcp package" in status["error"]
    body = json.loads(served.request("/sdapi/v1/options")[2])
    assert body["detail"].startswith("Easel could not start: --mcp needs the mcp package")
    assert "mcp package" in served.request("/", accept="text/html")[2].decode()


def test_an_app_whose_startup_fails_is_not_handed_requests(served: Served) -> None:
    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "queue could not start"})

    with pytest.raises(RuntimeError, match="queue could not start"):
        served.front.hand_over(broken)
    assert not served.front.ready
    assert served.request("/sdapi/v1/options")[0] == 503


def test_app_py_stops_with_the_reason_when_it_cannot_start(tmp_path: Path) -> None:
    """A start that fails after the port answered ends the process with the reason, not a hanging page."""
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data dir should be")
    done = subprocess.run(
        [sys.executable, "app.py", "--data-dir", str(not_a_folder), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "Easel could not start" in done.stderr and "Not a directory" in done.stderr
