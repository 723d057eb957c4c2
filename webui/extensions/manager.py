"""Finding, loading, switching and installing extensions.

Extensions are folders with an ``extension.toml`` (see :class:`webui.extensions.api.Manifest`) in two
places: the repository's ``extensions/`` (bundled with Easel) and ``<data dir>/extensions`` (installed by the
user; the same folder when the data dir is the repository, where a folder that ``install`` made carries an
:data:`INSTALL_MARKER`). Each enabled extension's entry module is imported under a private module name and
its ``setup(ext)`` called; an extension that fails there, or later in a hook or script, is recorded with a
message naming it and left out until the next reload; Easel itself keeps running.

The enabled state is A1111's option ``disabled_extensions`` in ``config.json``. ``--disable-all-extensions``
loads none, ``--disable-extra-extensions`` only the bundled ones (as in A1111). Nothing is installed or
updated unless :meth:`ExtensionManager.install` is called (the Extensions tab's buttons).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import types
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from webui.extensions.api import (
    EXTENSION_API_VERSION,
    MANIFEST_FILE,
    NAME_PATTERN,
    AccordionSpec,
    Easel,
    Extension,
    ExtensionError,
    Manifest,
    Script,
    Tab,
)

log = logging.getLogger(__name__)

INSTALL_MARKER = ".easel-install.json"  # written into a folder that ``install`` made: source and time
MODULE_ROOT = "_easel_extensions"  # extensions' modules live under this private package name
ENTRY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_ZIP_BYTES = 512 * 1024 * 1024  # unpacked size of an extension zip
MAX_ZIP_FILES = 20_000
GIT_TIMEOUT_S = 600
Disable = Literal["none", "extra", "all"]
State = Literal["active", "disabled", "off", "error"]


class InstallError(ExtensionError):
    """An install that cannot be done; the message says why and nothing was left behind."""


@dataclass
class ExtensionRecord:
    """One extension folder as the Extensions tab and ``GET /easel/v1/extensions`` show it."""

    name: str  # the manifest's name, or the folder's when the manifest cannot be read
    path: Path
    bundled: bool
    manifest: Manifest | None = None
    enabled: bool = True  # the user's choice (config.json); a flag or an error can still keep it off
    extension: Extension | None = None  # set when loaded and set up without error
    error: str | None = None
    off_reason: str | None = None  # why an enabled extension was not loaded (a command-line flag)

    @property
    def title(self) -> str:
        return self.manifest.title if self.manifest is not None else self.name

    @property
    def state(self) -> State:
        if self.error is not None:
            return "error"
        if not self.enabled:
            return "disabled"
        if self.extension is None:
            return "off"
        return "active"

    @property
    def status(self) -> str:
        """One line for the user: what the extension does now, or why not."""
        if self.error is not None:
            return self.error
        if not self.enabled:
            return "Disabled"
        if self.off_reason is not None:
            return self.off_reason
        return "Loaded" if self.extension is not None else "Not loaded"

    def summary(self) -> dict[str, Any]:
        manifest = self.manifest
        extension = self.extension
        return {
            "name": self.name,
            "title": self.title,
            "version": manifest.version if manifest else None,
            "description": manifest.description if manifest else "",
            "api": manifest.api if manifest else None,
            "priority": manifest.priority if manifest else None,
            "path": str(self.path),
            "bundled": self.bundled,
            "enabled": self.enabled,
            "state": self.state,
            "status": self.status,
            "error": self.error,
            "registered": _registered(extension) if extension is not None else {},
        }


def _registered(extension: Extension) -> dict[str, Any]:
    return {
        "tabs": [title for title, _ in extension.tabs],
        "accordions": [spec.title for spec in extension.accordions],
        "scripts": [script.title for script in extension.scripts],
        "hooks": len(extension.process_hooks) + len(extension.postprocess_hooks) + len(extension.image_hooks),
        "routes": len(extension.routers),
        "infotext_fields": [item.key for item in extension.infotext_fields],
        "preprocessors": sorted(extension.preprocessors),
        "upscalers": sorted(extension.upscalers),
        "samplers": [spec.name for spec in extension.samplers],
    }


# ------------------------------------------------------------------------------------------------ manifest


def read_manifest(folder: Path) -> Manifest:
    """The folder's ``extension.toml`` checked; :class:`ExtensionError` says what is wrong with it."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ExtensionError(f"no {MANIFEST_FILE} in {folder.name}/")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ExtensionError(f"{MANIFEST_FILE} cannot be read: {exc}") from exc
    return parse_manifest(data)


def parse_manifest(data: dict[str, Any]) -> Manifest:
    missing = [key for key in ("name", "version", "entry", "api") if key not in data]
    if missing:
        raise ExtensionError(f"{MANIFEST_FILE} is missing {', '.join(repr(k) for k in missing)}")
    name = data["name"]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ExtensionError(
            f"{MANIFEST_FILE}: name {name!r} is not allowed; use 1-64 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    for key in ("version", "entry", "title", "description"):
        if key in data and not isinstance(data[key], str):
            raise ExtensionError(f"{MANIFEST_FILE}: {key} must be a string, got {data[key]!r}")
    if not str(data["version"]).strip():
        raise ExtensionError(f"{MANIFEST_FILE}: version must not be empty")
    entry = data["entry"].strip()
    if not ENTRY_PATTERN.match(entry):
        raise ExtensionError(f"{MANIFEST_FILE}: entry {entry!r} must be 'module:function', e.g. 'main:setup'")
    api = data["api"]
    if isinstance(api, bool) or not isinstance(api, int) or api < 1:
        raise ExtensionError(f"{MANIFEST_FILE}: api must be a whole number (1 or more), got {api!r}")
    if api > EXTENSION_API_VERSION:
        raise ExtensionError(
            f"needs extension API {api}, but this Easel has API {EXTENSION_API_VERSION}; "
            "update Easel to use it"
        )
    priority = data.get("priority", 100)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ExtensionError(f"{MANIFEST_FILE}: priority must be a whole number, got {priority!r}")
    title = (data.get("title") or name).strip() or name
    return Manifest(
        name=name,
        title=title,
        version=data["version"].strip(),
        description=(data.get("description") or "").strip(),
        entry=entry,
        api=api,
        priority=priority,
    )


def _module_name(name: str) -> str:
    return f"{MODULE_ROOT}.{re.sub(r'[^a-z0-9_]', '_', name)}"


# ------------------------------------------------------------------------------------------------ manager


class ExtensionManager:
    """Discovery, enabled state, loading with isolation, and install (see the module doc)."""

    def __init__(
        self,
        *,
        bundled_dir: Path,
        installed_dir: Path,
        data_root: Path,
        options: Any,
        easel: Easel,
        disable: Disable = "none",
    ) -> None:
        self.bundled_dir = Path(bundled_dir)
        self.installed_dir = Path(installed_dir)
        self.data_root = Path(data_root)  # <data root>/<name>: the folder each extension may write to
        self.options = options  # OptionsStore: disabled_extensions
        self.easel = easel
        self.disable: Disable = disable
        self._lock = threading.RLock()
        self._records: list[ExtensionRecord] = []
        self.loaded_at = 0.0

    # -- reading -------------------------------------------------------------------------------------------
    def records(self) -> list[ExtensionRecord]:
        with self._lock:
            return list(self._records)

    def record(self, name: str) -> ExtensionRecord | None:
        with self._lock:
            return next((r for r in self._records if r.name == name), None)

    def active(self) -> list[Extension]:
        """Enabled extensions loaded without error, in (priority, name) order."""
        with self._lock:
            loaded = [r.extension for r in self._records if r.extension is not None and r.error is None]
        return sorted(loaded, key=lambda e: (e.manifest.priority, e.name))

    def scripts(self, tab: Tab) -> list[tuple[Extension, Script]]:
        return [(e, script) for e in self.active() for script in e.scripts if tab in script.tabs]

    def find_script(self, tab: Tab, title: str) -> tuple[Extension, Script] | None:
        wanted = title.strip().lower()
        return next(((e, s) for e, s in self.scripts(tab) if s.title.lower() == wanted), None)

    def accordions(self, tab: Tab) -> list[tuple[Extension, AccordionSpec]]:
        return [(e, spec) for e in self.active() for spec in e.accordions if tab in spec.tabs]

    def summary(self) -> list[dict[str, Any]]:
        return [record.summary() for record in self.records()]

    # -- failures ------------------------------------------------------------------------------------------
    def fail(self, name: str, where: str, exc: BaseException) -> str:
        """Record that extension ``name`` failed in ``where``; it is left out until a reload or restart."""
        with self._lock:
            record = self.record(name)
            title = record.title if record is not None else name
            message = f"Extension '{title}' failed in {where}: {type(exc).__name__}: {exc}"
            if record is not None:
                record.error = message
        log.error("%s", message, exc_info=(type(exc), exc, exc.__traceback__))
        return message

    # -- enabled state -------------------------------------------------------------------------------------
    def disabled_names(self) -> set[str]:
        return set(getattr(self.options.get(), "disabled_extensions", []) or [])

    def set_enabled(self, enabled: dict[str, bool]) -> list[str]:
        """Save the enabled state of the named extensions in config.json, then reload; returns the names
        whose state changed. Names not listed keep theirs (also those of extensions not present now)."""
        known = {r.name for r in self.records()}
        unknown = sorted(set(enabled) - known)
        if unknown:
            raise ExtensionError(f"no extension named {', '.join(repr(n) for n in unknown)}")
        before = self.disabled_names()
        after = set(before)
        for name, on in enabled.items():
            (after.discard if on else after.add)(name)
        if after != before:
            self.options.update({"disabled_extensions": sorted(after)})
            self.reload()
        return sorted(before ^ after)

    # -- discovery and loading -----------------------------------------------------------------------------
    def reload(self) -> list[ExtensionRecord]:
        """Find every extension folder again and (re)import the enabled ones."""
        with self._lock:
            for (
                old
            ) in self._records:  # what was imported before goes, so a disabled extension leaves no trace
                _forget_modules(_module_name(old.name))
            records = self._discover()
            for record in records:
                if record.manifest is not None and record.error is None and record.enabled:
                    self._load(record)
            self._records = records
            self.loaded_at = time.time()
        for record in records:
            if record.error:
                log.warning("%s", record.error if record.error.startswith("Extension '") else
                            f"Extension '{record.title}' ({record.path}): {record.error}")  # fmt: skip
        active = ", ".join(r.name for r in records if r.state == "active") or "none"
        log.info("extensions: %d found, active: %s", len(records), active)
        return list(records)

    def _folders(self) -> list[tuple[Path, bool]]:
        found: list[tuple[Path, bool]] = []
        same = _same_dir(self.bundled_dir, self.installed_dir)
        for root, bundled in ((self.bundled_dir, True), (self.installed_dir, False)):
            if bundled is False and same:
                continue
            if not root.is_dir():
                continue
            for folder in sorted(root.iterdir(), key=lambda p: p.name):
                if not folder.is_dir() or folder.name.startswith((".", "_")):
                    continue
                is_bundled = bundled and not (folder / INSTALL_MARKER).exists()
                found.append((folder, is_bundled))
        return found

    def _discover(self) -> list[ExtensionRecord]:
        disabled = self.disabled_names()
        records: list[ExtensionRecord] = []
        seen: dict[str, ExtensionRecord] = {}
        for folder, bundled in self._folders():
            if not (folder / MANIFEST_FILE).exists():
                continue  # not an extension (e.g. a stray folder); nothing to show
            record = ExtensionRecord(name=folder.name, path=folder, bundled=bundled)
            try:
                record.manifest = read_manifest(folder)
                record.name = record.manifest.name
            except ExtensionError as exc:
                record.error = f"Extension in {folder.name}/ cannot be used: {exc}"
            record.enabled = record.name not in disabled
            other = seen.get(record.name)
            if other is not None:
                record.error = (
                    f"Extension in {folder} is not loaded: the name {record.name!r} is already used by "
                    f"{other.path}"
                )
            else:
                seen[record.name] = record
            if record.enabled and record.error is None:
                if self.disable == "all":
                    record.off_reason = "Not loaded: Easel was started with --disable-all-extensions"
                elif self.disable == "extra" and not record.bundled:
                    record.off_reason = "Not loaded: Easel was started with --disable-extra-extensions"
            records.append(record)
        return records

    def _load(self, record: ExtensionRecord) -> None:
        manifest = record.manifest
        assert manifest is not None
        if record.off_reason is not None:
            return
        package = _module_name(manifest.name)
        module_name, _, function_name = manifest.entry.partition(":")
        extension = Extension(
            manifest=manifest,
            path=record.path,
            data_dir=self.data_root / manifest.name,
            easel=self.easel,
        )
        where = "import"
        try:
            _forget_modules(package)
            _make_package(package, record.path)
            module = importlib.import_module(f"{package}.{module_name}")
            setup = getattr(module, function_name, None)
            if not callable(setup):
                raise ExtensionError(f"its entry {manifest.entry!r} names no function in {module_name}.py")
            where = "setup"
            setup(extension)
        except (Exception, SystemExit) as exc:  # the app keeps running without this extension
            record.extension = None
            record.error = f"Extension '{manifest.title}' failed in {where}: {type(exc).__name__}: {exc}"
            log.error("%s", record.error, exc_info=(type(exc), exc, exc.__traceback__))
            _forget_modules(package)
            return
        record.extension = extension

    # -- install -------------------------------------------------------------------------------------------
    def install(self, source: str) -> ExtensionRecord:
        """Install from a local folder, a ``.zip`` file, or a git URL (cloned with ``git clone --depth 1``)
        into ``<data dir>/extensions/<name>``; never over an existing folder. Loads it (unless disabled by
        a flag) and returns its record."""
        source = (source or "").strip()
        if not source:
            raise InstallError("Give a folder path, a .zip file or a git URL to install from.")
        if _is_git_url(source):
            return self._install_with(source, lambda staging: _clone(source, staging))
        path = Path(source).expanduser()
        if path.is_dir():
            return self._install_with(source, lambda staging: _copy_folder(path, staging))
        if path.is_file() and zipfile.is_zipfile(path):
            return self._install_with(source, lambda staging: _extract_zip(path, staging))
        if path.is_file():
            raise InstallError(f"{path} is not a .zip file; give an extension folder, a .zip or a git URL.")
        raise InstallError(
            f"{source!r} is neither an existing folder, a .zip file nor a git URL (https://, ssh://, git@, file://)."
        )

    def install_zip(self, path: Path, source: str | None = None) -> ExtensionRecord:
        """Install an uploaded zip file."""
        if not zipfile.is_zipfile(path):
            raise InstallError("The uploaded file is not a .zip archive.")
        return self._install_with(source or path.name, lambda staging: _extract_zip(path, staging))

    def _install_with(self, source: str, fill: Any) -> ExtensionRecord:
        self.installed_dir.mkdir(parents=True, exist_ok=True)
        staging_root = Path(tempfile.mkdtemp(prefix=".install-", dir=self.installed_dir))
        try:
            staging = staging_root / "extension"
            fill(staging)
            folder = _extension_root(staging)
            try:
                manifest = read_manifest(folder)
            except ExtensionError as exc:
                raise InstallError(f"Not installed: {exc}") from exc
            target = self.installed_dir / manifest.name
            if target.exists():
                raise InstallError(
                    f"Not installed: {target} already exists. Remove or rename that folder first "
                    "(Easel never overwrites an extension)."
                )
            clash = self.record(manifest.name)
            if clash is not None:
                raise InstallError(
                    f"Not installed: an extension named {manifest.name!r} is already present in {clash.path}."
                )
            (folder / INSTALL_MARKER).write_text(
                json.dumps({"source": source, "installed": time.strftime("%Y-%m-%d %H:%M:%S")}),
                encoding="utf-8",
            )
            os.rename(folder, target)
        finally:
            shutil.rmtree(staging_root, ignore_errors=True)
        log.info("extension %r installed from %s into %s", manifest.name, source, target)
        self.reload()
        record = self.record(manifest.name)
        assert record is not None
        return record


# ------------------------------------------------------------------------------------------------ helpers


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _forget_modules(package: str) -> None:
    # A snapshot first: another thread (the model loading at start) may be importing while this runs, and
    # iterating sys.modules itself then fails with "dictionary changed size during iteration".
    for key in [k for k in list(sys.modules) if k == package or k.startswith(package + ".")]:
        sys.modules.pop(key, None)
    importlib.invalidate_caches()


def _make_package(package: str, folder: Path) -> None:
    """Make ``folder`` importable as ``package`` (its modules import each other relatively)."""
    if MODULE_ROOT not in sys.modules:
        root = types.ModuleType(MODULE_ROOT)
        root.__path__ = []
        sys.modules[MODULE_ROOT] = root
    init = folder / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(folder)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    else:
        module = types.ModuleType(package)
        module.__path__ = [str(folder)]
        module.__file__ = None
        sys.modules[package] = module


def _is_git_url(source: str) -> bool:
    return source.startswith(("https://", "http://", "ssh://", "git://", "file://", "git@"))


def _clone(url: str, target: Path) -> None:
    git = shutil.which("git")
    if git is None:
        raise InstallError(
            "Installing from a git URL needs git, which is not installed here. Install git, or download the "
            "extension as a .zip and install that."
        )
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(
            [git, "clone", "--depth", "1", "--", url, str(target)],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"git clone {url} did not finish in {GIT_TIMEOUT_S} s.") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit status {done.returncode}"
        raise InstallError(f"git clone {url} failed: {reason}")
    shutil.rmtree(target / ".git", ignore_errors=True)


def _copy_folder(source: Path, target: Path) -> None:
    if not (source / MANIFEST_FILE).exists() and not any(
        (c / MANIFEST_FILE).exists() for c in _children(source)
    ):
        raise InstallError(f"{source} has no {MANIFEST_FILE}; it is not an Easel extension.")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".git", "__pycache__", INSTALL_MARKER))


def _children(folder: Path) -> Iterable[Path]:
    try:
        return [c for c in folder.iterdir() if c.is_dir()]
    except OSError:
        return []


def _safe_member(name: str) -> PurePosixPath:
    """A zip member's relative path, or :class:`InstallError` for an absolute path or one with ``..``."""
    normal = name.replace("\\", "/")
    path = PurePosixPath(normal)
    if normal.startswith("/") or re.match(r"^[A-Za-z]:", normal) or ".." in path.parts:
        raise InstallError(f"Not installed: the zip holds an unsafe path {name!r} (absolute or with '..').")
    return path


def _extract_zip(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_ZIP_FILES:
                raise InstallError(
                    f"Not installed: the zip holds {len(members)} files (limit {MAX_ZIP_FILES})."
                )
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                raise InstallError(f"Not installed: the zip unpacks to more than {MAX_ZIP_BYTES >> 20} MB.")
            plan = []
            for member in members:
                relative = _safe_member(member.filename)
                if stat.S_ISLNK(member.external_attr >> 16):
                    raise InstallError(f"Not installed: the zip holds a symbolic link ({member.filename}).")
                plan.append((member, relative))
            target.mkdir(parents=True)
            for member, relative in plan:
                if not relative.parts:
                    continue
                destination = target.joinpath(*relative.parts)
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(destination, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile as exc:
        raise InstallError(f"Not installed: the zip cannot be read ({exc}).") from exc


def _extension_root(staging: Path) -> Path:
    """The folder holding ``extension.toml``: the staging folder itself, or its one sub-folder (a zip or
    repository that wraps the extension in a folder)."""
    if (staging / MANIFEST_FILE).exists():
        return staging
    children = [c for c in _children(staging) if not c.name.startswith(".") and c.name != "__MACOSX"]
    if len(children) == 1 and (children[0] / MANIFEST_FILE).exists():
        return children[0]
    raise InstallError(
        f"Not installed: no {MANIFEST_FILE} at the top (or in one top folder) of what was given."
    )


__all__ = [
    "INSTALL_MARKER",
    "ExtensionManager",
    "ExtensionRecord",
    "InstallError",
    "parse_manifest",
    "read_manifest",
]
