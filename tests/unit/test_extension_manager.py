"""ExtensionManager: manifests, discovery, enabled state, isolation, flags and install (no model needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

from webui.domain.generation import Txt2ImgRequest
from webui.extensions.api import EXTENSION_API_VERSION, ExtensionError
from webui.extensions.hooks import HookRunner
from webui.extensions.manager import (
    INSTALL_MARKER,
    ExtensionManager,
    InstallError,
    parse_manifest,
    read_manifest,
)
from webui.services.options import OptionsStore

REPO = Path(__file__).resolve().parents[2]

GOOD = {"name": "demo", "version": "1.0", "entry": "main:setup", "api": 1}


def write_extension(root: Path, folder_name: str, body: str = "", *, manifest: str | None = None,
                    **fields: Any) -> Path:  # fmt: skip
    folder = root / folder_name
    name = folder_name
    folder.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        values = {"name": name, "title": name.title(), "version": "1.0.0", "entry": "main:setup", "api": 1}
        values.update(fields)
        manifest = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
    (folder / "extension.toml").write_text(manifest)
    (folder / "main.py").write_text(textwrap.dedent(body) or "def setup(ext):\n    pass\n")
    return folder


SCRIPT_BODY = """
from webui.extensions.api import Script


class Demo(Script):
    title = "{title}"
    tabs = ("txt2img",)


def setup(ext):
    ext.add_script(Demo())
    ext.on_process(lambda ctx, request: request.model_copy(update={{"prompt": request.prompt + " [{name}]"}}))
"""


class _Easel:
    """A stand-in for the host (these tests never generate)."""

    def checkpoints(self) -> list[Any]:
        return []


def make_manager(tmp_path: Path, *, bundled: Path | None = None, installed: Path | None = None,
                 disable: str = "none") -> ExtensionManager:  # fmt: skip
    return ExtensionManager(
        bundled_dir=bundled or tmp_path / "bundled",
        installed_dir=installed or tmp_path / "data" / "extensions",
        data_root=tmp_path / "data" / "extensions-data",
        options=OptionsStore(tmp_path / "data" / "config.json"),
        easel=_Easel(),  # type: ignore[arg-type]
        disable=disable,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------------------ manifests


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": None}, "missing 'name'"),
        ({"entry": None, "api": None}, "missing 'entry', 'api'"),
        ({"name": "Bad Name"}, "name 'Bad Name' is not allowed"),
        ({"name": "../x"}, "is not allowed"),
        ({"api": EXTENSION_API_VERSION + 1}, f"needs extension API {EXTENSION_API_VERSION + 1}"),
        ({"api": "1"}, "api must be a whole number"),
        ({"api": 0}, "api must be a whole number"),
        ({"entry": "main.setup"}, "must be 'module:function'"),
        ({"version": 1}, "version must be a string"),
        ({"priority": "high"}, "priority must be a whole number"),
    ],
)
def test_manifest_errors_say_what_is_wrong(change: dict[str, Any], message: str) -> None:
    data = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ExtensionError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_manifest(data)


def test_manifest_defaults_and_unreadable_toml(tmp_path: Path) -> None:
    manifest = parse_manifest(GOOD)
    assert (manifest.title, manifest.description, manifest.priority) == ("demo", "", 100)
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "extension.toml").write_text("name = ")
    with pytest.raises(ExtensionError, match="cannot be read"):
        read_manifest(folder)


# ------------------------------------------------------------------------------------------------ discovery


def test_discovers_bundled_and_installed_in_priority_then_name_order(tmp_path: Path) -> None:
    write_extension(tmp_path / "bundled", "zeta", priority=10)
    write_extension(tmp_path / "bundled", "alpha")
    write_extension(tmp_path / "data" / "extensions", "beta")
    (tmp_path / "bundled" / "not-an-extension").mkdir()
    manager = make_manager(tmp_path)
    manager.reload()
    assert [(r.name, r.bundled, r.state) for r in manager.records()] == [
        ("alpha", True, "active"),
        ("zeta", True, "active"),
        ("beta", False, "active"),
    ]
    assert [e.name for e in manager.active()] == ["zeta", "alpha", "beta"]  # priority 10 first, then by name
    assert manager.summary()[0]["status"] == "Loaded"


def test_same_folder_for_bundled_and_installed_uses_the_install_marker(tmp_path: Path) -> None:
    root = tmp_path / "repo-extensions"
    write_extension(root, "shipped")
    installed = write_extension(root, "added")
    (installed / INSTALL_MARKER).write_text("{}")
    manager = make_manager(tmp_path, bundled=root, installed=root)
    manager.reload()
    assert {r.name: r.bundled for r in manager.records()} == {"added": False, "shipped": True}


def test_a_second_extension_with_a_used_name_is_refused(tmp_path: Path) -> None:
    write_extension(tmp_path / "bundled", "demo")
    write_extension(tmp_path / "data" / "extensions", "demo-copy", name="demo")
    manager = make_manager(tmp_path)
    manager.reload()
    states = [(r.path.name, r.state) for r in manager.records()]
    assert states == [("demo", "active"), ("demo-copy", "error")]
    assert "already used by" in (manager.records()[1].error or "")


def test_scripts_accordions_and_case_insensitive_lookup(tmp_path: Path) -> None:
    write_extension(tmp_path / "bundled", "demo", SCRIPT_BODY.format(title="X/Y/Z plot", name="demo"))
    manager = make_manager(tmp_path)
    manager.reload()
    [(extension, script)] = manager.scripts("txt2img")
    assert extension.name == "demo" and script.title == "X/Y/Z plot"
    assert manager.find_script("txt2img", "x/y/z PLOT") == (extension, script)
    assert manager.find_script("img2img", "x/y/z plot") is None
    assert manager.scripts("img2img") == [] and manager.accordions("txt2img") == []


def test_relative_imports_inside_an_extension_and_reload_reimports(tmp_path: Path) -> None:
    folder = write_extension(tmp_path / "bundled", "multi", "from .helpers import TITLE\n\n"
                             "def setup(ext):\n    ext.add_tab(TITLE, lambda: None)\n")  # fmt: skip
    (folder / "helpers.py").write_text("TITLE = 'First'\n")
    manager = make_manager(tmp_path)
    manager.reload()
    assert manager.active()[0].tabs[0][0] == "First"
    (folder / "helpers.py").write_text("TITLE = 'Second'\n")
    manager.reload()
    assert manager.active()[0].tabs[0][0] == "Second"


# ------------------------------------------------------------------------------------------------ isolation


def test_broken_extensions_are_reported_and_the_others_load(tmp_path: Path) -> None:
    root = tmp_path / "bundled"
    write_extension(root, "bad-import", "import not_a_module_anywhere\n\ndef setup(ext):\n    pass\n")
    write_extension(root, "bad-setup", "def setup(ext):\n    raise RuntimeError('no luck')\n")
    write_extension(root, "bad-exit", "import sys\nsys.exit(3)\n")
    write_extension(root, "bad-entry", entry="main:missing")
    write_extension(root, "too-new", api=EXTENSION_API_VERSION + 1)
    write_extension(root, "good")
    manager = make_manager(tmp_path)
    manager.reload()
    errors = {r.name: r.error for r in manager.records()}
    assert [e.name for e in manager.active()] == ["good"]
    assert errors["bad-import"] == (
        "Extension 'Bad-Import' failed in import: ModuleNotFoundError: "
        "No module named 'not_a_module_anywhere'"
    )
    assert errors["bad-setup"] == "Extension 'Bad-Setup' failed in setup: RuntimeError: no luck"
    assert errors["bad-exit"] == "Extension 'Bad-Exit' failed in import: SystemExit: 3"
    assert "names no function" in (errors["bad-entry"] or "")
    assert "needs extension API" in (errors["too-new"] or "") and "too-new/" in (errors["too-new"] or "")
    assert errors["good"] is None


def test_fail_disables_until_reload_and_a_raising_hook_leaves_the_job_running(tmp_path: Path) -> None:
    root = tmp_path / "bundled"
    write_extension(root, "first", SCRIPT_BODY.format(title="One", name="first"))
    write_extension(root, "boom", "def setup(ext):\n    ext.on_process(lambda ctx, r: 1 / 0)\n")
    write_extension(root, "last", SCRIPT_BODY.format(title="Two", name="last"))
    manager = make_manager(tmp_path)
    manager.reload()
    runner = HookRunner(manager, _Easel())  # type: ignore[arg-type]
    job = runner.begin(Txt2ImgRequest(prompt="cat"))
    assert job.request.prompt == "cat [first] [last]"  # the others' hooks ran, in order
    assert job.warnings == ["Extension 'Boom' failed in a process hook: ZeroDivisionError: division by zero"]
    assert [e.name for e in manager.active()] == ["first", "last"]
    assert manager.record("boom").state == "error"  # type: ignore[union-attr]
    assert runner.begin(Txt2ImgRequest(prompt="cat")).warnings == []  # left out of later jobs
    manager.reload()
    assert [e.name for e in manager.active()] == ["boom", "first", "last"]


# ------------------------------------------------------------------------------------------- enabled state


def test_disabled_state_is_persisted_and_leaves_no_trace(tmp_path: Path) -> None:
    root = tmp_path / "bundled"
    write_extension(root, "quiet", SCRIPT_BODY.format(title="Quiet", name="quiet"))
    write_extension(root, "other")
    manager = make_manager(tmp_path)
    manager.reload()
    assert manager.set_enabled({"quiet": False}) == ["quiet"]
    config = json.loads((tmp_path / "data" / "config.json").read_text())
    assert config["disabled_extensions"] == ["example-hello", "quiet"]  # the tutorial ships switched off
    fresh = make_manager(tmp_path)
    fresh.reload()
    assert fresh.record("quiet").state == "disabled"  # type: ignore[union-attr]
    assert [e.name for e in fresh.active()] == ["other"]
    assert fresh.scripts("txt2img") == [] and fresh.find_script("txt2img", "Quiet") is None
    job = HookRunner(fresh, _Easel()).begin(Txt2ImgRequest(prompt="cat"))  # type: ignore[arg-type]
    assert job.request.prompt == "cat"
    assert not any(key.startswith("_easel_extensions.quiet") for key in sys.modules)  # never imported
    assert fresh.set_enabled({"quiet": True}) == ["quiet"]
    assert fresh.find_script("txt2img", "quiet") is not None
    with pytest.raises(ExtensionError, match="no extension named 'nope'"):
        fresh.set_enabled({"nope": True})


@pytest.mark.parametrize(("disable", "active"), [("none", ["extra", "shipped"]), ("extra", ["shipped"]),
                                                 ("all", [])])  # fmt: skip
def test_command_line_flags(tmp_path: Path, disable: str, active: list[str]) -> None:
    write_extension(tmp_path / "bundled", "shipped")
    write_extension(tmp_path / "data" / "extensions", "extra")
    manager = make_manager(tmp_path, disable=disable)
    manager.reload()
    assert sorted(e.name for e in manager.active()) == active
    if disable != "none":
        record = manager.record("extra")
        assert record is not None and record.state == "off" and "--disable-" in record.status


def test_cli_flags_set_the_setting() -> None:
    from webui.cli import settings_from_args

    assert settings_from_args([]).disable_extensions == "none"
    assert settings_from_args(["--disable-extra-extensions"]).disable_extensions == "extra"
    assert settings_from_args(["--disable-all-extensions"]).disable_extensions == "all"


# ------------------------------------------------------------------------------------------------ install


def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


MANIFEST = 'name = "{name}"\nversion = "1.0"\nentry = "main:setup"\napi = 1\n'


def test_install_from_a_folder_loads_it_and_never_overwrites(tmp_path: Path) -> None:
    source = write_extension(tmp_path / "downloads", "from-folder")
    manager = make_manager(tmp_path)
    manager.reload()
    record = manager.install(str(source))
    target = tmp_path / "data" / "extensions" / "from-folder"
    assert record.path == target and record.state == "active" and not record.bundled
    assert json.loads((target / INSTALL_MARKER).read_text())["source"] == str(source)
    with pytest.raises(InstallError, match="already exists"):
        manager.install(str(source))
    assert [p.name for p in target.parent.iterdir()] == ["from-folder"]  # no staging folder left


def test_install_from_a_zip_with_a_top_folder(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ext.zip", {"zipped-1.0/extension.toml": MANIFEST.format(name="zipped"),
                                          "zipped-1.0/main.py": "def setup(ext):\n    pass\n"})  # fmt: skip
    manager = make_manager(tmp_path)
    record = manager.install(str(archive))
    assert record.name == "zipped" and (tmp_path / "data" / "extensions" / "zipped" / "main.py").exists()


@pytest.mark.parametrize("bad", ["../evil.py", "/etc/evil.py", "ok/../../evil.py", "C:/evil.py"])
def test_a_zip_with_unsafe_paths_is_refused_and_nothing_is_written(tmp_path: Path, bad: str) -> None:
    archive = _zip(tmp_path / "bad.zip", {"extension.toml": MANIFEST.format(name="bad"), bad: "x = 1\n"})
    manager = make_manager(tmp_path)
    with pytest.raises(InstallError, match="unsafe path"):
        manager.install_zip(archive)
    assert list((tmp_path / "data" / "extensions").iterdir()) == []
    assert not (tmp_path / "evil.py").exists()


def test_install_refuses_what_is_not_an_extension(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    (tmp_path / "plain").mkdir()
    with pytest.raises(InstallError, match="not an Easel extension"):
        manager.install(str(tmp_path / "plain"))
    with pytest.raises(InstallError, match="neither an existing folder"):
        manager.install(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InstallError, match=r"not a \.zip"):
        manager.install(str(tmp_path / "notes.txt"))
    archive = _zip(tmp_path / "bad-manifest.zip", {"extension.toml": 'name = "Bad Name"\n'})
    with pytest.raises(InstallError, match=r"Not installed: .*missing"):
        manager.install(str(archive))
    with pytest.raises(InstallError, match="Give a folder path"):
        manager.install("  ")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_install_from_a_file_url_git_repository(tmp_path: Path) -> None:
    repo = write_extension(tmp_path / "src", "from-git")
    run = {"cwd": repo, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)  # type: ignore[call-overload]
    subprocess.run(["git", "add", "."], **run)  # type: ignore[call-overload]
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], **run)  # type: ignore[call-overload]
    manager = make_manager(tmp_path)
    record = manager.install(repo.as_uri())
    assert record.name == "from-git" and record.state == "active"
    assert not (record.path / ".git").exists()
    with pytest.raises(InstallError, match=r"git clone .* failed"):
        manager.install((tmp_path / "no-such-repo").as_uri())


def test_install_from_git_without_git_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(InstallError, match="needs git"):
        make_manager(tmp_path).install("https://example.invalid/ext.git")


# ------------------------------------------------------------------------------------------------ bundled


def test_the_example_extension_loads_and_its_hook_signs_the_prompt(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, bundled=REPO / "extensions")
    manager.reload()
    assert manager.record("example-hello").state == "disabled"  # type: ignore[union-attr]  # ships off
    assert {e.name for e in manager.active()} >= {"xyz-plot", "checkpoint-merger", "loopback"}
    manager.set_enabled({"example-hello": True})
    record = manager.record("example-hello")
    assert record is not None and record.state == "active", record and record.error
    hello = record.extension
    assert hello is not None
    assert [t for t, _ in hello.tabs] == ["Hello"]
    assert [a.title for a in hello.accordions] == ["Hello"]
    assert [(f.key, f.component) for f in hello.infotext_fields] == [("Hello", "greeting")]
    assert len(hello.routers) == 1
    runner = HookRunner(manager, _Easel())  # type: ignore[arg-type]
    off = runner.begin(Txt2ImgRequest(prompt="a cat"))
    assert off.request.prompt == "a cat" and off.request.extra_infotext == {}
    values = {"example-hello": {"enabled": True, "greeting": "hi there"}}
    on = runner.begin(Txt2ImgRequest(prompt="a cat", extension_values=values))
    assert on.request.prompt == "a cat, hi there"
    assert on.request.extra_infotext == {"Hello": "hi there"}


def _webui_imports(path: Path) -> set[str]:
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "webui" or name.startswith("webui.")}


def test_bundled_extensions_import_only_the_public_surface() -> None:
    files = sorted((REPO / "extensions").rglob("*.py"))
    assert files, "the example extension is missing"
    for path in files:
        bad = {
            n
            for n in _webui_imports(path)
            if n != "webui.extensions" and not n.startswith("webui.extensions.")
        }
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}; use only webui.extensions"
        internals = ("webui.extensions.manager", "webui.extensions.host", "webui.extensions.hooks")
        internal = {n for n in _webui_imports(path) if n in internals}
        assert not internal, f"{path.relative_to(REPO)} imports Easel's internals {sorted(internal)}"
