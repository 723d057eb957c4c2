"""What extensions register that joins Easel's own lists: upscalers (``ext.add_upscaler``), samplers
(``ext.add_sampler``) and ControlNet preprocessors (``ext.add_preprocessor``).

:func:`connect_registrations` gives the services a provider that reads the manager's active extensions at
each use, so an extension disabled (or failed) since start drops out of the lists at once. A registered
callable that raises disables its extension through ``manager.fail`` and fails the job with that message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from webui.extensions.api import Extension, ExtensionError

log = logging.getLogger(__name__)


def connect_registrations(services: Any) -> None:
    """Attach the extension providers to the services (``services.extensions`` is read at each call)."""
    upscalers = getattr(services, "upscalers", None)
    if upscalers is not None:
        upscalers.extension_upscalers = lambda: extension_upscalers(getattr(services, "extensions", None))
    from webui.domain import samplers

    samplers.set_extension_samplers(lambda: extension_samplers(getattr(services, "extensions", None)))
    controlnet = getattr(services, "controlnet", None)
    if controlnet is not None:
        controlnet.extension_preprocessors = lambda: extension_preprocessors(
            getattr(services, "extensions", None)
        )


def extension_upscalers(manager: Any) -> dict[str, Callable[..., Any]]:
    """The active extensions' upscalers by name (the first extension in hook order keeps a name)."""
    found: dict[str, Callable[..., Any]] = {}
    if manager is None:
        return found
    for extension in manager.active():
        for name, upscaler in extension.upscalers.items():
            if name in found:
                log.warning("extension %s: upscaler %r is already registered", extension.name, name)
                continue
            found[name] = guarded(manager, extension, f"its upscaler {name!r}", upscaler)
    return found


def extension_samplers(manager: Any) -> list[Any]:
    """The active extensions' samplers as sampler-table entries (``webui.domain.samplers``)."""
    from webui.domain.samplers import extension_sampler

    found: list[Any] = []
    if manager is None:
        return found
    for extension in manager.active():
        for spec in extension.samplers:
            found.append(extension_sampler(spec.name, spec.scheduler_class, spec.config, extension.name))
    return found


def extension_preprocessors(manager: Any) -> dict[str, Callable[..., Any]]:
    """The active extensions' ControlNet preprocessors by name (the first in hook order keeps a name)."""
    found: dict[str, Callable[..., Any]] = {}
    if manager is None:
        return found
    for extension in manager.active():
        for name, preprocessor in extension.preprocessors.items():
            if name not in found:
                found[name] = guarded(manager, extension, f"its preprocessor {name!r}", preprocessor)
    return found


def guarded(manager: Any, extension: Extension, where: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``; its failure disables ``extension`` and raises ``ExtensionError`` with the message."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ExtensionError:
            raise
        except Exception as exc:
            raise ExtensionError(manager.fail(extension.name, where, exc)) from exc

    return call
