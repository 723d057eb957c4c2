"""Gradio is imported without its run-time ``.pyi`` rewriting; nothing on the way imports it first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_gradio_skips_only_the_stub_writer_and_components_still_work() -> None:
    out = _run(
        "from webui.ui.gradio_import import import_gradio\n"
        "gr = import_gradio()\n"
        "import gradio.component_meta as meta\n"
        "print(meta.create_or_modify_pyi.__name__)\n"
        "with gr.Blocks() as demo:\n"
        "    box = gr.Textbox(label='Prompt', value='a cat')\n"
        "    box.change(lambda v: v, box, box)\n"
        "print(box.value, len(demo.config['components']) > 0)\n"
        "import inspect; print(bool(inspect.getsource(meta)))\n"
    )
    assert out.split() == ["_skip_stub_writing", "a", "cat", "True", "True"]


def test_the_app_imports_gradio_through_import_gradio() -> None:
    """Everything ``app.py`` loads before building the UI leaves Gradio unimported (else the skip is lost)."""
    out = _run(
        "import sys, tempfile\n"
        "from webui.cli import settings_from_args\n"
        "from webui.container import build_services\n"
        "import webui.server, webui.api.routes, webui.api.middleware, webui.starting\n"
        "settings = settings_from_args(['--data-dir', tempfile.mkdtemp(), '--api'])\n"
        "build_services(settings)\n"
        "print('gradio' in sys.modules)\n"
    )
    assert out.strip() == "False"
