"""The Extensions tab and ``GET /easel/v1/extensions`` (no model, no browser)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ui.helpers import event_fn
from webui.container import Services, build_services
from webui.settings import Settings

gr = pytest.importorskip("gradio")

MANIFEST = 'name = "{name}"\ntitle = "{title}"\nversion = "2.1"\nentry = "main:setup"\napi = 1\n'


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    from tests.extension_fakes import switch_on_the_example

    built = build_services(Settings(data_dir=switch_on_the_example(tmp_path), preload_model=False))
    yield built
    built.generation.shutdown()


@pytest.fixture
def blocks(services: Services) -> Any:
    from webui.ui.app import build_ui

    return build_ui(services)


def _elem(blocks: Any, elem_id: str) -> Any:
    return next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def _row(rows: list[list[Any]], name: str) -> list[Any]:
    return next(row for row in rows if row[2] == name)


def test_the_tab_lists_the_example_extension(blocks: Any) -> None:
    assert _elem(blocks, "tab_extensions").label == "Extensions"
    table = _elem(blocks, "extensions_table")
    rows = table.value["data"]
    assert _row(rows, "example-hello") == [
        True,
        "Hello (example)",
        "example-hello",
        "1.0.0",
        "bundled",
        "Loaded",
    ]
    assert "active" in _elem(blocks, "extensions_message").value


def test_apply_saves_the_enabled_state_and_says_a_restart_is_needed(blocks: Any, services: Services) -> None:
    from webui.ui.extensions_tab import table_rows

    rows = table_rows(services.extensions)
    _row(rows, "example-hello")[0] = False
    apply = event_fn(blocks, "extensions_apply", "click").fn
    new_rows, message = apply(rows)
    assert _row(new_rows, "example-hello")[0] is False
    assert _row(new_rows, "example-hello")[5] == "Disabled"
    assert "example-hello disabled" in message and "Restart Easel" in message
    config = json.loads(services.settings.config_file.read_text())
    assert config["disabled_extensions"] == ["example-hello"]
    assert services.extensions.active() == [] or all(
        e.name != "example-hello" for e in services.extensions.active()
    )
    _, again = apply(new_rows)
    assert again.startswith("Nothing changed.")


def test_install_from_a_folder_and_a_zip_and_bad_sources(
    blocks: Any, services: Services, tmp_path: Path
) -> None:
    source = tmp_path / "downloads" / "greeter"
    source.mkdir(parents=True)
    (source / "extension.toml").write_text(MANIFEST.format(name="greeter", title="Greeter"))
    (source / "main.py").write_text("def setup(ext):\n    raise RuntimeError('not today')\n")
    install = event_fn(blocks, "extensions_install_button", "click").fn
    rows, message, kept = install(str(source))
    assert (
        message.startswith("Installed 'Greeter' into")
        and "not loaded: Extension 'Greeter' failed in setup" in message
    )
    assert kept == ""
    assert _row(rows, "greeter")[4:] == [
        "installed",
        "Extension 'Greeter' failed in setup: RuntimeError: not today",
    ]
    rows, message, kept = install(str(source))
    assert "already exists" in message and kept == str(source)  # the user's text stays to correct it
    rows, message, _ = install("no/such/folder")
    assert "neither an existing folder" in message

    archive = tmp_path / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("extension.toml", MANIFEST.format(name="zipped", title="Zipped"))
        zf.writestr("main.py", "def setup(ext):\n    pass\n")
    upload = event_fn(blocks, "extensions_install_zip", "click").fn
    rows, message = upload(str(archive))
    assert message.startswith("Installed 'Zipped'") and _row(rows, "zipped")[5] == "Loaded"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("extension.toml", MANIFEST.format(name="evil", title="Evil"))
        zf.writestr("../escape.py", "x = 1\n")
    _, message = upload(str(evil))
    assert "unsafe path" in message
    _, message = upload(None)
    assert message == "Choose a .zip file first."


def test_reload_finds_a_new_folder(blocks: Any, services: Services) -> None:
    folder = services.settings.extensions_path / "late"
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text(MANIFEST.format(name="late", title="Late"))
    (folder / "main.py").write_text("def setup(ext):\n    pass\n")
    rows, message = event_fn(blocks, "extensions_reload", "click").fn()
    assert _row(rows, "late")[5] == "Loaded" and message.startswith("Reloaded.")


def test_api_lists_extensions_with_state_and_errors(services: Services) -> None:
    from fastapi.testclient import TestClient

    from webui.server import build_app

    folder = services.settings.extensions_path / "broken"
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text(MANIFEST.format(name="broken", title="Broken"))
    (folder / "main.py").write_text("import nowhere_to_be_found\n")
    services.extensions.reload()
    services.settings = services.settings.model_copy(update={"nowebui": True})
    with TestClient(build_app(services)) as client:
        body = client.get("/easel/v1/extensions").json()
    by_name = {item["name"]: item for item in body}
    hello = by_name["example-hello"]
    assert hello["state"] == "active" and hello["bundled"] is True
    assert hello["registered"]["tabs"] == ["Hello"] and hello["registered"]["infotext_fields"] == ["Hello"]
    broken = by_name["broken"]
    assert broken["state"] == "error" and broken["bundled"] is False
    assert (
        broken["error"]
        == "Extension 'Broken' failed in import: ModuleNotFoundError: No module named 'nowhere_to_be_found'"
    )
