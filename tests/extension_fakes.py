"""Extensions built in tests (no extension folder) and a manager with the agreed interface.

``FakeManager`` has the methods the UI and the API call on ``services.extensions`` (the real host,
``services.extension_host``, runs the scripts). ``sample_extension`` registers a script, an accordion with
an infotext field, a tab and a route; ``broken_extensions`` three whose UI pieces raise.
"""

from __future__ import annotations

import io
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from PIL import Image

from webui.extensions.api import (
    Extension,
    GeneratedImage,
    GenerationResult,
    Manifest,
    Request,
    Script,
    ScriptRun,
    Tab,
)


def switch_on_the_example(data_dir: Path) -> Path:
    """config.json with no extension switched off: the tutorial extension ships off (``disabled_extensions``
    defaults to it), and these tests use it."""
    import json

    config = data_dir / "config.json"
    values = json.loads(config.read_text(encoding="utf-8")) if config.exists() else {}
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({**values, "disabled_extensions": []}), encoding="utf-8")
    return data_dir


class FakeManager:
    def __init__(self, extensions: list[Extension]) -> None:
        self.extensions = extensions
        self.failures: dict[str, str] = {}

    def active(self) -> list[Extension]:
        ordered = sorted(self.extensions, key=lambda e: (e.manifest.priority, e.name))
        return [e for e in ordered if e.name not in self.failures]

    def scripts(self, tab: Tab) -> list[tuple[Extension, Script]]:
        return [(e, s) for e in self.active() for s in e.scripts if tab in s.tabs]

    def find_script(self, tab: Tab, title: str) -> tuple[Extension, Script] | None:
        for extension, script in self.scripts(tab):
            if script.title.lower() == title.strip().lower():
                return extension, script
        return None

    def accordions(self, tab: Tab) -> list[tuple[Extension, Any]]:
        return [(e, a) for e in self.active() for a in e.accordions if tab in a.tabs]

    def records(self) -> list[Any]:  # the Extensions tab's table: not what these tests look at
        return []

    def summary(self) -> list[dict[str, Any]]:
        return []

    def fail(self, name: str, where: str, exc: BaseException) -> str:
        title = next(e.manifest.title for e in self.extensions if e.name == name)
        message = f"Extension '{title}' failed in {where}: {type(exc).__name__}: {exc}"
        self.failures[name] = message
        return message


def png(color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def result_for(request: Request, infotext: str) -> GenerationResult:
    image = GeneratedImage(
        seed=1, subseed=1, prompt=request.prompt, negative_prompt=request.negative_prompt,
        infotext=infotext, png_bytes=png(),
    )  # fmt: skip
    return GenerationResult(request=request, images=[image], model_name="fake", model_hash=None)


def recording_submit(seen: list[Any], users: list[Any] | None = None) -> Any:
    """A stand-in for ``GenerationService.submit_txt2img`` / ``submit_img2img``: records each request (and
    the user it belongs to) and answers at once with ``result_for``."""

    def submit(request: Any, task_id: Any = None, user: Any = None) -> Future[Any]:
        seen.append(request)
        if users is not None:
            users.append(user)
        future: Future[Any] = Future()
        future.set_result(result_for(request, request.prompt + "\nSteps: 2"))
        return future

    return submit


class EchoScript(Script):
    """Answers with one image whose infotext records its arguments and the request's extension values."""

    title = "Echo args"

    def __init__(self) -> None:
        self.calls: list[tuple[Request, tuple[Any, ...]]] = []

    def ui(self, tab: Tab) -> list[Any]:
        import gradio as gr

        return [
            gr.Slider(1, 10, value=3, step=1, label="Repeats", elem_id=f"{tab}_echo_repeats"),
            gr.Textbox("abc", label="Word", elem_id=f"{tab}_echo_word"),
        ]

    def api_defaults(self, tab: Tab) -> list[Any]:
        return [3, "abc"]

    def run(self, p: ScriptRun, *args: Any) -> GenerationResult:
        self.calls.append((p.request, args))
        if args and args[-1] == "fail":
            raise ValueError("the word was 'fail'")
        return result_for(p.request, f"{p.request.prompt}\nEcho: {list(args)}, Tab: {p.tab}")


def make_extension(name: str, title: str, root: Path, priority: int = 100) -> Extension:
    manifest = Manifest(name=name, title=title, version="1.0.0", description="test", entry="main:setup",
                        api=1, priority=priority)  # fmt: skip
    return Extension(manifest=manifest, path=root / name, data_dir=root / "data" / name, easel=None)  # type: ignore[arg-type]


def sample_extension(root: Path) -> tuple[Extension, EchoScript]:
    """``echo``: the Echo args script, a "Greeting" accordion (enabled, greeting; infotext field
    ``Greeting`` restores ``greeting``), an "Echo" tab, and the route ``GET /ext/echo/ping``."""
    import gradio as gr
    from fastapi import APIRouter

    extension = make_extension("echo", "Echo", root)
    script = EchoScript()
    extension.add_script(script)

    def accordion(tab: Tab) -> dict[str, Any]:
        return {
            "enabled": gr.Checkbox(False, label="Greet", elem_id=f"{tab}_echo_enabled"),
            "greeting": gr.Textbox("hello", label="Greeting", elem_id=f"{tab}_echo_greeting"),
        }

    extension.add_accordion("Greeting", accordion)
    extension.add_infotext_field("Greeting", "greeting")

    def tab() -> None:
        gr.Markdown("Echo tab body", elem_id="echo_tab_body")

    extension.add_tab("Echo", tab)
    router = APIRouter()

    @router.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "echo"}

    extension.add_routes(router)
    return extension, script


def broken_extensions(root: Path) -> list[Extension]:
    """Three extensions whose accordion build, script ui and tab build raise."""
    accordion = make_extension("bad-accordion", "Bad accordion", root)

    def raise_build(tab: Tab) -> dict[str, Any]:
        raise RuntimeError("accordion boom")

    accordion.add_accordion("Broken accordion", raise_build)

    class BadUi(Script):
        title = "Bad UI"

        def ui(self, tab: Tab) -> list[Any]:
            raise RuntimeError("ui boom")

    script = make_extension("bad-script", "Bad script", root)
    script.add_script(BadUi())

    tab = make_extension("bad-tab", "Bad tab", root)

    def raise_tab() -> None:
        raise RuntimeError("tab boom")

    tab.add_tab("Broken tab", raise_tab)
    return [accordion, script, tab]


SUFFIX_MANIFEST = """name = "prompt-suffix"
title = "Prompt suffix"
version = "1.0.0"
description = "A test extension: a txt2img/img2img script that appends text to the prompt."
entry = "main:setup"
api = 1
"""

SUFFIX_MAIN = """
from typing import Any

from webui.extensions.api import Extension, GenerationResult, Script, ScriptRun, Tab


class PromptSuffix(Script):
    title = "Prompt suffix"

    def ui(self, tab: Tab) -> list[Any]:
        import gradio as gr

        return [gr.Textbox(", by a script", label="Suffix", elem_id=f"{tab}_prompt_suffix")]

    def api_defaults(self, tab: Tab) -> list[Any]:
        return [", by a script"]

    def run(self, p: ScriptRun, suffix: str) -> GenerationResult:
        p.easel.set_progress("Prompt suffix: one job")
        return p.generate(p.request.model_copy(update={"prompt": p.request.prompt + suffix}))


def setup(ext: Extension) -> None:
    ext.add_script(PromptSuffix())
"""


def write_suffix_extension(data_dir: Path) -> Path:
    """Install the "Prompt suffix" test extension into ``data_dir/extensions`` (found at start)."""
    folder = data_dir / "extensions" / "prompt-suffix"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "extension.toml").write_text(SUFFIX_MANIFEST)
    (folder / "main.py").write_text(SUFFIX_MAIN)
    return folder
