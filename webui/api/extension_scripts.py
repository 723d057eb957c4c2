"""Extensions over the REST API: ``script_name`` / ``script_args``, ``alwayson_scripts``, the script lists and
the extensions' own routes under ``/ext/<name>``.

- ``script_name`` (any case) names an extension script of the endpoint's tab; ``script_args`` are its ``ui``
  widgets' values in order (A1111's layout) and missing trailing ones come from ``api_defaults``. The
  script runs as one queued job (``extension_host.run_script``).
- ``alwayson_scripts: {"<extension name, title or accordion title>": {"args": [...] | {...}}}`` becomes
  ``request.extension_values[<name>]``: a dict by widget name as given, a list onto the accordion's widget
  names in order (``AccordionSpec.api_args``).
- ``add_routes`` routers are served under ``/ext/<name>`` behind the API's authentication.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from fastapi import APIRouter

from webui.api.routes import ApiError
from webui.extensions.api import Extension, Request, Script, Tab

log = logging.getLogger(__name__)

EXTENSION_PREFIX = "/ext"


def _manager(services: Any) -> Any:
    return getattr(services, "extensions", None)


def find_extension_script(services: Any, tab: Tab, name: str | None) -> tuple[Extension, Script] | None:
    """The extension script titled ``name`` (any case) in ``tab``, if an active extension has one."""
    manager = _manager(services)
    if manager is None or not name or not name.strip():
        return None
    found = manager.find_script(tab, name.strip())
    return found


def find_alwayson(services: Any, tab: Tab, title: str) -> Extension | None:
    """The active extension ``alwayson_scripts[title]`` names: by name, title or accordion title, any case."""
    manager = _manager(services)
    if manager is None:
        return None
    wanted = title.strip().lower()
    for extension in manager.active():
        names = {extension.name.lower(), extension.manifest.title.lower()}
        names |= {spec.title.lower() for spec in extension.accordions if tab in spec.tabs}
        if wanted in names:
            return extension
    return None


def _arg_names(extension: Extension, tab: Tab) -> tuple[str, ...]:
    names: list[str] = []
    for spec in extension.accordions:
        if tab in spec.tabs:
            names += [name for name in spec.api_args if name not in names]
    return tuple(names)


def extension_values(services: Any, tab: Tab, alwayson_scripts: Mapping[str, Any] | None) -> dict[str, Any]:
    """``request.extension_values`` from the body's ``alwayson_scripts`` (entries of Easel's own always-on
    scripts, such as ``controlnet``, are left to their handlers)."""
    values: dict[str, dict[str, Any]] = {}
    for title, entry in (alwayson_scripts or {}).items():
        extension = find_alwayson(services, tab, title)
        if extension is None:
            continue
        args = entry.get("args", []) if isinstance(entry, Mapping) else entry
        if isinstance(args, Mapping):
            values[extension.name] = {str(key): value for key, value in args.items()}
            continue
        if not isinstance(args, list | tuple):
            raise ApiError(422, "ScriptError", f"alwayson_scripts.{title}.args must be a list or an object")
        names = _arg_names(extension, tab)
        if len(args) > len(names):
            known = ", ".join(names) if names else "none known"
            raise ApiError(
                422,
                "ScriptError",
                f"alwayson_scripts.{title}.args has {len(args)} values but extension "
                f"'{extension.manifest.title}' names {len(names)} ({known}); send args as an object by name",
            )
        values[extension.name] = dict(zip(names, args, strict=False))
    return values


def script_arguments(script: Script, tab: Tab, args: list[Any]) -> list[Any]:
    """``script_args`` completed from the script's ``api_defaults`` (A1111's layout, positional)."""
    defaults = list(script.api_defaults(tab) or [])
    return list(args) + defaults[len(args) :]


def submit_script(
    services: Any, tab: Tab, request: Request, name: str | None, args: list[Any], task_id: str | None = None
) -> Future[Any] | None:
    """Queue the extension script ``name`` with ``request`` (None when ``name`` is no extension script)."""
    found = find_extension_script(services, tab, name)
    if found is None:
        return None
    extension, script = found
    try:
        arguments = script_arguments(script, tab, args)
    except Exception as exc:  # an extension's api_defaults that raises disables it, like a failing ui
        message = _manager(services).fail(extension.name, f"api_defaults of script {script.title!r}", exc)
        raise ApiError(422, "ScriptError", message) from exc
    future: Future[Any] = services.extension_host.run_script(
        extension, script, request, arguments, tab, task_id=task_id
    )
    return future


def extension_script_titles(services: Any, tab: Tab) -> list[str]:
    """The tab's extension scripts as ``/sdapi/v1/scripts`` lists them (lowercase titles)."""
    manager = _manager(services)
    if manager is None:
        return []
    return list(dict.fromkeys(script.title.strip().lower() for _e, script in manager.scripts(tab)))


def alwayson_names(services: Any, tab: Tab) -> list[str]:
    """The extensions with an accordion in ``tab`` (names, as ``alwayson_scripts`` takes them)."""
    manager = _manager(services)
    if manager is None:
        return []
    return list(dict.fromkeys(extension.name for extension, _spec in manager.accordions(tab)))


def script_info(services: Any) -> list[dict[str, Any]]:
    """``/sdapi/v1/script-info`` entries of the extension scripts and accordions (A1111's shape)."""
    manager = _manager(services)
    if manager is None:
        return []
    out: list[dict[str, Any]] = []
    for tab in ("txt2img", "img2img"):
        for extension, script in manager.scripts(tab):
            try:
                defaults = list(script.api_defaults(tab) or [])
            except Exception as exc:  # listed without arguments; the extension is reported
                manager.fail(extension.name, f"api_defaults of script {script.title!r}", exc)
                defaults = []
            args = [_arg(None, value) for value in defaults]
            out.append(_info(script.title.strip().lower(), False, tab, args))
        for extension in alwayson_extensions(manager, tab):
            names = [_arg(name, None) for name in _arg_names(extension, tab)]
            out.append(_info(extension.name, True, tab, names))
    return out


def alwayson_extensions(manager: Any, tab: Tab) -> list[Extension]:
    return list({id(e): e for e, _spec in manager.accordions(tab)}.values())


def _info(name: str, alwayson: bool, tab: str, args: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "is_alwayson": alwayson, "is_img2img": tab == "img2img", "args": args}


def _arg(label: str | None, value: Any) -> dict[str, Any]:
    return {"label": label, "value": value, "minimum": None, "maximum": None, "step": None, "choices": None}


def a1111_extensions(services: Any) -> list[dict[str, Any]]:
    """``/sdapi/v1/extensions`` in A1111's shape (no git details: extensions are folders here)."""
    manager = _manager(services)
    records = manager.records() if manager is not None and hasattr(manager, "records") else []
    return [
        {
            "name": record.name,
            "remote": None,
            "branch": None,
            "commit_hash": None,
            "version": record.manifest.version if record.manifest is not None else None,
            "commit_date": None,
            "enabled": record.state == "active",
        }
        for record in records
    ]


def mount_extension_routers(router: APIRouter, services: Any) -> None:
    """Serve each active extension's routers under ``/ext/<name>`` (inside ``router``, so behind its auth)."""
    manager = _manager(services)
    if manager is None:
        return
    for extension in list(manager.active()):
        for extra in list(extension.routers):
            try:
                if not isinstance(extra, APIRouter):
                    raise TypeError(f"add_routes takes a fastapi.APIRouter, got {type(extra).__name__}")
                router.include_router(extra, prefix=f"{EXTENSION_PREFIX}/{extension.name}")
            except Exception as exc:  # the extension is disabled, the API keeps its other routes
                manager.fail(extension.name, "its API routes", exc)
                break


__all__ = [
    "a1111_extensions",
    "alwayson_names",
    "extension_script_titles",
    "extension_values",
    "find_alwayson",
    "find_extension_script",
    "mount_extension_routers",
    "script_info",
    "submit_script",
]
