"""Import Gradio without its import-time stub writer: about half of ``import gradio`` on a small machine.

Each Gradio component class, as it is defined, re-reads its own source file, parses it and rewrites the
matching ``.pyi`` type stub inside site-packages (``gradio.component_meta.create_or_modify_pyi``). The stubs
are for editors and already ship in the wheel; at run time the work only costs time (measured: 5-7 s of a
7-9 s ``import gradio`` on 2 cores, more under load), and it is why Easel's studio took seconds longer to
start than its own code needs. :func:`import_gradio` turns that one step off for this process, then imports
Gradio; nothing else in Gradio changes. If a Gradio version no longer has the function, the import is
plain. ``bench/startup.py`` measures the difference.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_TARGET = "gradio.component_meta"
_STEP = "create_or_modify_pyi"


def _skip_stub_writing(*_: Any, **__: Any) -> None:
    """Gradio's ``.pyi`` stubs are already installed; nothing to write at run time."""


class _StubWriterOff(importlib.abc.MetaPathFinder):
    """Finds ``gradio.component_meta`` as usual and, once it has run, replaces its stub writer."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader

        class Loader(importlib.abc.Loader):
            def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... as the original has them
                return getattr(original, name)

            def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
                return original.create_module(spec)

            def exec_module(self, module: ModuleType) -> None:
                original.exec_module(module)
                if hasattr(module, _STEP):
                    setattr(module, _STEP, _skip_stub_writing)

        spec.loader = Loader()
        return spec


def skip_stub_writing() -> None:
    """Make the coming ``import gradio`` skip the stub rewriting (no effect once Gradio is imported)."""
    if "gradio" not in sys.modules and not any(isinstance(f, _StubWriterOff) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubWriterOff())


def import_gradio() -> ModuleType:
    """``import gradio``, without the stub rewriting when Gradio is not imported yet in this process."""
    skip_stub_writing()
    import gradio

    return gradio
