"""Import a bundled extension's modules (``extensions/<name>/<module>.py``) in tests, without the manager.

The folder names have dashes, so each is imported as a private package whose path is the folder; the
modules' relative imports then work as they do when Easel loads the extension.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_module(extension: str, module: str = "main") -> types.ModuleType:
    package = "_easel_test_ext_" + extension.replace("-", "_")
    if package not in sys.modules:
        holder = types.ModuleType(package)
        holder.__path__ = [str(ROOT / "extensions" / extension)]
        sys.modules[package] = holder
    return importlib.import_module(f"{package}.{module}")
