"""The page a browser gets while Easel starts: served within a second, replaced by the studio when built.

Gradio's import and the UI build take several seconds (more on a busy machine) whatever the model library's
size. Instead of refusing connections until then, ``serve`` puts :class:`StartingApp` in front: the port
answers at once with a small page that shows what Easel is doing and reloads itself into the studio when it
is ready; API calls get ``503`` with ``Retry-After`` and the same A1111-shaped error body as other errors,
so clients that poll until the server is up keep working. Once the real app is handed over, every request
goes to it untouched (its lifespan is started then, on the server's loop).

This module imports only the standard library: it must answer before anything heavy is imported.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

STATUS_PATH = "/easel/v1/startup"
RETRY_AFTER_S = 2


class StartingApp:
    """Answers "starting" until :meth:`hand_over` gives it the real app, then forwards every request to it."""

    def __init__(self) -> None:
        self._app: Asgi | None = None
        self._stage = "starting"
        self._error: str | None = None
        self._began = time.monotonic()
        self._ready_after: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_ready = threading.Event()
        self._state: dict[str, Any] = {}
        self._inner_lifespan: _Lifespan | None = None
        self._lock = threading.Lock()

    # -- called from the thread that builds the real app -------------------------------------------------

    def stage(self, text: str) -> None:
        """What Easel is doing now, in a few words ("importing Gradio"); shown on the page."""
        with self._lock:
            self._stage = text

    def fail(self, message: str) -> None:
        """The build failed: the page and the status say why (the server is stopped by the caller)."""
        with self._lock:
            self._error = message

    def hand_over(self, app: Asgi, timeout: float = 120.0) -> None:
        """Start ``app``'s lifespan on the server's loop, then send every request to it. Blocks until done."""
        if not self._loop_ready.wait(timeout):
            raise RuntimeError("the web server did not start its event loop")
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._start(app), self._loop)
        future.result(timeout)

    @property
    def ready(self) -> bool:
        return self._app is not None

    def status(self) -> dict[str, Any]:
        with self._lock:
            now = self._ready_after if self._ready_after is not None else time.monotonic() - self._began
            return {
                "ready": self._app is not None,
                "stage": "ready" if self._app is not None else self._stage,
                "seconds": round(now, 1),
                "error": self._error,
            }

    # -- ASGI ---------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind == "http" and scope.get("path") == STATUS_PATH:
            await _respond(send, 200, "application/json", json.dumps(self.status()), no_store=True)
            return
        app = self._app
        if app is not None:
            await app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1013, "reason": "Easel is starting"})
            return
        if kind == "http":
            await self._answer_starting(scope, send)

    async def _answer_starting(self, scope: Scope, send: Send) -> None:
        status = self.status()
        if _wants_html(scope):
            await _respond(send, 503, "text/html; charset=utf-8", _page(status), retry=True, no_store=True)
            return
        if status["error"]:
            detail = f"Easel could not start: {status['error']}"
        else:
            detail = (
                f"Easel is starting ({status['stage']}, {status['seconds']:.0f} s so far); "
                f"retry in a few seconds, or poll {STATUS_PATH} until it says ready"
            )
        body = {"error": "ServiceUnavailable", "detail": detail, "body": "", "errors": detail}
        await _respond(send, 503, "application/json", json.dumps(body), retry=True, no_store=True)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._state = scope.setdefault("state", {})
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loop = asyncio.get_running_loop()
                self._loop_ready.set()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._inner_lifespan is not None:
                    await self._inner_lifespan.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self, app: Asgi) -> None:
        lifespan = _Lifespan(app, self._state)
        await lifespan.startup()
        self._inner_lifespan = lifespan
        with self._lock:
            self._ready_after = time.monotonic() - self._began
            self._app = app


class _Lifespan:
    """Runs another ASGI app's lifespan protocol (startup now, shutdown later) from inside our own."""

    def __init__(self, app: Asgi, state: dict[str, Any]) -> None:
        self._app = app
        self._state = state
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Future[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self._state}
        self._task = asyncio.ensure_future(self._app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await self._reply()
        if reply is not None and reply["type"] == "lifespan.startup.failed":
            raise RuntimeError(reply.get("message") or "the app's startup failed")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._reply(), timeout=10)
        except TimeoutError:
            self._task.cancel()

    async def _reply(self) -> Message | None:
        """The app's answer, or None when it returned without one (an app without lifespan support)."""
        assert self._task is not None
        getter: asyncio.Future[Any] = asyncio.ensure_future(self._from_app.get())
        pending: set[asyncio.Future[Any]] = {getter, self._task}
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        error = self._task.exception()
        if error is not None:
            raise error
        return None


def _wants_html(scope: Scope) -> bool:
    if scope.get("method") not in ("GET", "HEAD"):
        return False
    headers = dict(scope.get("headers") or [])
    accept = headers.get(b"accept", b"").decode("latin-1")
    return scope.get("path") == "/" or "text/html" in accept


async def _respond(
    send: Send, status: int, content_type: str, body: str, *, retry: bool = False, no_store: bool = False
) -> None:
    data = body.encode("utf-8")
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(data)).encode())]
    if retry:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    if no_store:
        headers.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _page(status: dict[str, Any]) -> str:
    stage = _escape(status["error"] or status["stage"])
    return _PAGE.replace("{stage}", stage).replace("{status_path}", STATUS_PATH)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Easel is starting</title>
<style>
  :root { color-scheme: light dark; font-family: system-ui, sans-serif; }
  body { display: grid; place-items: center; min-height: 90vh; margin: 0; }
  main { max-width: 28rem; padding: 1.5rem; text-align: center; }
  h1 { font-size: 1.4rem; margin: 0 0 .75rem; }
  #stage { opacity: .8; min-height: 1.5em; }
  .bar { height: 4px; border-radius: 2px; background: rgba(127,127,127,.25); overflow: hidden;
         margin-top: 1rem; }
  .bar i { display: block; height: 100%; width: 30%; background: #f97316;
           animation: slide 1.4s ease-in-out infinite; }
  @keyframes slide { from { transform: translateX(-100%); } to { transform: translateX(340%); } }
  .failed .bar i { animation: none; width: 100%; background: #dc2626; }
</style></head>
<body><main id="starting">
<h1>Easel is starting</h1>
<div id="stage">{stage}</div>
<div class="bar"><i></i></div>
<noscript><p>Reload this page in a few seconds.</p></noscript>
</main>
<script>
(function () {
  var stage = document.getElementById("stage");
  function poll() {
    fetch("{status_path}", {cache: "no-store"}).then(function (r) { return r.json(); }).then(function (s) {
      if (s.ready) { location.reload(); return; }
      if (s.error) {
        document.body.className = "failed";
        stage.textContent = "Easel could not start: " + s.error + " (see the terminal that runs it)";
        return;
      }
      var what = s.stage.charAt(0).toUpperCase() + s.stage.slice(1);
      stage.textContent = what + " (" + Math.round(s.seconds) + " s)";
      setTimeout(poll, 500);
    }).catch(function () {
      stage.textContent = "Waiting for the server (is app.py still running?)";
      setTimeout(poll, 1500);
    });
  }
  poll();
})();
</script></body></html>
"""
