"""Imports run one way: ui/api → services → runtime/registry/metadata → domain (see DESIGN.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEBUI = ROOT / "webui"
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "safetensors.torch", "gradio", "peft")


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _files(package: str) -> list[Path]:
    return sorted((WEBUI / package).rglob("*.py"))


def test_pure_layers_import_no_heavy_library_at_module_level() -> None:
    for package in ("domain", "metadata", "registry", "services"):
        for path in _files(package):
            heavy = {name for name in _imports(path, top_level_only=True) if name.startswith(HEAVY)}
            assert not heavy, f"{path.relative_to(ROOT)} imports {heavy} at module level"


def test_training_datasets_are_read_without_torch() -> None:
    """The Train tab shows captions, buckets and the step arithmetic before anything heavy is loaded."""
    path = WEBUI / "training" / "dataset.py"
    heavy = {name for name in _imports(path, top_level_only=False) if name.startswith(HEAVY)}
    assert not heavy, f"webui/training/dataset.py imports {heavy}"


def test_domain_imports_only_domain() -> None:
    for path in _files("domain"):
        for name in _imports(path, top_level_only=False):
            if name.startswith("webui."):
                assert name.startswith("webui.domain"), f"{path.relative_to(ROOT)} imports {name}"


def test_gradio_only_in_ui_and_runtime_never_imports_adapters() -> None:
    for path in WEBUI.rglob("*.py"):
        names = _imports(path, top_level_only=False)
        relative = path.relative_to(WEBUI).as_posix()
        if not relative.startswith(("ui/", "server.py")):
            assert not any(n.startswith("gradio") for n in names), f"{relative} imports gradio"
        if relative.startswith(("runtime/", "training/")):
            bad = {n for n in names if n.startswith(("webui.services", "webui.ui", "webui.api"))}
            assert not bad, f"{relative} imports {bad}"


def test_services_start_without_torch(tmp_path: Path) -> None:
    """Building the services (what `python app.py` does before serving) must not import torch."""
    code = (
        "import sys\n"
        "from webui.container import build_services\n"
        "from webui.settings import Settings\n"
        f"s = build_services(Settings(data_dir={str(tmp_path)!r}, preload_model=False))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
