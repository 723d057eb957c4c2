"""The example extension (the tutorial in extensions/README.md).

- a "Hello" tab: a button that lists the checkpoints through ``ext.easel``;
- an always-on accordion in txt2img and img2img (a checkbox and a greeting): when it is ticked, the process
  hook appends the greeting to the prompt and writes it into the infotext as ``Hello: <greeting>``, which
  PNG Info and paste read back into the accordion;
- a route, ``GET /ext/example-hello/greeting``.

It imports only ``webui.extensions`` from Easel; Gradio and FastAPI are imported where widgets and routes
are built, so loading the extension costs nothing.
"""

from __future__ import annotations

from typing import Any

from webui.extensions.api import Extension, HookContext, Request, Tab

DEFAULT_GREETING = "hello from Easel"
INFOTEXT_KEY = "Hello"


def setup(ext: Extension) -> None:
    ext.add_tab("Hello", lambda: build_tab(ext))
    ext.add_accordion("Hello", build_accordion)
    ext.add_infotext_field(INFOTEXT_KEY, "greeting")
    ext.on_process(sign_prompt)
    ext.add_routes(build_router(ext))


def sign_prompt(ctx: HookContext, request: Request) -> Request | None:
    """Append the greeting to the prompt and record it in the infotext (when the accordion is ticked)."""
    if not ctx.values.get("enabled"):
        return None
    greeting = str(ctx.values.get("greeting") or DEFAULT_GREETING).strip()
    if not greeting:
        return None
    prompt = f"{request.prompt}, {greeting}" if request.prompt else greeting
    extra = {**request.extra_infotext, INFOTEXT_KEY: greeting}
    return request.model_copy(update={"prompt": prompt, "extra_infotext": extra})


def build_accordion(tab: Tab) -> dict[str, Any]:
    import gradio as gr

    enabled = gr.Checkbox(label="Sign the prompt", value=False, elem_id=f"{tab}_hello_enabled")
    greeting = gr.Textbox(label="Greeting", value=DEFAULT_GREETING, elem_id=f"{tab}_hello_greeting")
    return {"enabled": enabled, "greeting": greeting}


def checkpoint_lines(ext: Extension) -> str:
    checkpoints = ext.easel.checkpoints()
    if not checkpoints:
        return "Hello! There is no checkpoint yet: put one into models/Stable-diffusion."
    lines = [f"Hello! Easel has {len(checkpoints)} checkpoint(s):"]
    lines += [f"- {info.title} ({info.family})" for info in checkpoints]
    return "\n".join(lines)


def build_tab(ext: Extension) -> None:
    import gradio as gr

    gr.Markdown("An example tab, added by the *Hello (example)* extension.")
    button = gr.Button("Say hello", elem_id="hello_button")
    output = gr.Textbox(label="Answer", lines=6, interactive=False, elem_id="hello_output")
    button.click(lambda: checkpoint_lines(ext), outputs=output)


def build_router(ext: Extension) -> Any:
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/greeting")
    def greeting() -> dict[str, Any]:
        return {"greeting": DEFAULT_GREETING, "checkpoints": len(ext.easel.checkpoints())}

    return router
