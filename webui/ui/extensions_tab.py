"""The Extensions tab: which extensions exist, which are on, what went wrong, and installing new ones.

The table lists every extension folder (bundled with Easel or installed) with its state or error message;
ticking "Enabled" and pressing Apply saves the choice in ``config.json`` (A1111's ``disabled_extensions``)
and reloads them, so their hooks and API scripts follow at once, while tabs, accordions and Script entries
appear or disappear after a restart (the page is built once). Reload finds new or changed folders. Install
takes a folder path, a git URL or an uploaded .zip; nothing is installed or updated any other way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr

from webui.extensions.api import ExtensionError

log = logging.getLogger(__name__)

HEADERS = ["Enabled", "Extension", "Name", "Version", "Source", "Status"]
RESTART_NOTE = "Restart Easel for tabs, accordions and Script entries to appear or disappear."


def table_rows(manager: Any) -> list[list[Any]]:
    rows = []
    for record in manager.records():
        version = record.manifest.version if record.manifest is not None else ""
        source = "bundled" if record.bundled else "installed"
        rows.append([record.enabled, record.title, record.name, version, source, record.status])
    return rows


def _summary(manager: Any) -> str:
    records = manager.records()
    active = sum(1 for r in records if r.state == "active")
    errors = [r for r in records if r.state == "error"]
    line = f"{len(records)} extension(s), {active} active."
    if errors:
        line += f" {len(errors)} with an error (see Status)."
    flag = getattr(manager, "disable", "none")
    if flag == "all":
        line += " Started with --disable-all-extensions: none is loaded."
    elif flag == "extra":
        line += " Started with --disable-extra-extensions: only bundled ones are loaded."
    return line


def _enabled_from_rows(rows: Any) -> dict[str, bool]:
    """``{name: enabled}`` from the table's value (a list of rows or a pandas frame)."""
    if hasattr(rows, "values") and hasattr(rows, "columns"):
        rows = rows.values.tolist()
    wanted: dict[str, bool] = {}
    for row in rows or []:
        if len(row) < 3 or not row[2]:
            continue
        value = row[0]
        wanted[str(row[2])] = value is True or str(value).strip().lower() in ("true", "1", "yes")
    return wanted


def apply_enabled(manager: Any, rows: Any) -> tuple[list[list[Any]], str]:
    wanted = _enabled_from_rows(rows)
    known = {record.name for record in manager.records()}
    gone = sorted(set(wanted) - known)
    wanted = {name: on for name, on in wanted.items() if name in known}
    try:
        changed = manager.set_enabled(wanted)
    except (ExtensionError, ValueError, OSError) as exc:
        return table_rows(manager), f"Not saved: {exc}"
    if not changed:
        message = "Nothing changed."
    else:
        states = [f"{name} {'enabled' if wanted[name] else 'disabled'}" for name in changed]
        message = f"Saved: {', '.join(states)}. {RESTART_NOTE}"
    if gone:
        message += f" Not found any more (press Reload): {', '.join(gone)}."
    return table_rows(manager), f"{message}\n\n{_summary(manager)}"


def reload_extensions(manager: Any) -> tuple[list[list[Any]], str]:
    manager.reload()
    return table_rows(manager), f"Reloaded. {_summary(manager)} {RESTART_NOTE}"


def install_from(manager: Any, source: str | None) -> tuple[list[list[Any]], str, str]:
    """Install from a folder path or git URL typed by the user; the source box keeps the text on error."""
    try:
        record = manager.install(source or "")
    except ExtensionError as exc:
        return table_rows(manager), str(exc), source or ""
    except Exception as exc:  # an unexpected failure is reported, the app keeps running
        log.exception("extension install failed")
        return table_rows(manager), f"Not installed: {type(exc).__name__}: {exc}", source or ""
    return table_rows(manager), _installed_message(record), ""


def install_upload(manager: Any, upload: Any) -> tuple[list[list[Any]], str]:
    path = getattr(upload, "name", upload)
    if not path:
        return table_rows(manager), "Choose a .zip file first."
    try:
        record = manager.install_zip(Path(path), source=Path(path).name)
    except ExtensionError as exc:
        return table_rows(manager), str(exc)
    except Exception as exc:
        log.exception("extension install failed")
        return table_rows(manager), f"Not installed: {type(exc).__name__}: {exc}"
    return table_rows(manager), _installed_message(record)


def _installed_message(record: Any) -> str:
    state = "loaded" if record.state == "active" else f"not loaded: {record.status}"
    return f"Installed '{record.title}' into {record.path} ({state}). {RESTART_NOTE}"


def build_extensions_tab(services: Any) -> dict[str, Any]:
    """The tab's widgets (built inside ``gr.Tab("Extensions")``)."""
    manager = services.extensions
    gr.Markdown(
        "Extensions add tabs, accordions, scripts and API routes. Tick **Enabled** and press **Apply** to "
        "switch them; errors show in **Status**. Extensions are folders in `extensions/` with an "
        "`extension.toml`; see `extensions/README.md` to write one."
    )
    table = gr.Dataframe(
        value=table_rows(manager),
        headers=HEADERS,
        datatype=["bool", "str", "str", "str", "str", "str"],
        type="array",
        interactive=True,
        static_columns=[1, 2, 3, 4, 5],
        wrap=True,
        column_widths=["110px", "20%", "16%", "100px", "110px", "36%"],
        elem_id="extensions_table",
        label="Extensions",
    )
    with gr.Row():
        apply = gr.Button("Apply", variant="primary", elem_id="extensions_apply")
        reload = gr.Button("Reload", elem_id="extensions_reload")
    message = gr.Markdown(_summary(manager), elem_id="extensions_message")
    with gr.Accordion("Install", open=False, elem_id="extensions_install"):
        gr.Markdown(
            "Install from a folder on this machine, a git URL (`https://…`, `file://…`; needs git) or a "
            ".zip. It goes into the data folder's `extensions/`; an existing folder is never overwritten, "
            "and nothing is ever installed or updated on its own."
        )
        with gr.Row():
            source = gr.Textbox(
                label="Folder path or git URL", placeholder="https://github.com/user/easel-extension.git",
                elem_id="extensions_source", scale=4,
            )  # fmt: skip
            install = gr.Button("Install", elem_id="extensions_install_button", scale=1)
        with gr.Row():
            upload = gr.File(label=".zip file", file_types=[".zip"], elem_id="extensions_zip", scale=4)
            install_zip = gr.Button("Install .zip", elem_id="extensions_install_zip", scale=1)

    apply.click(lambda rows: apply_enabled(manager, rows), inputs=table, outputs=[table, message])
    reload.click(lambda: reload_extensions(manager), outputs=[table, message])
    install.click(lambda text: install_from(manager, text), inputs=source, outputs=[table, message, source])
    install_zip.click(lambda file: install_upload(manager, file), inputs=upload, outputs=[table, message])
    return {"table": table, "message": message, "source": source, "upload": upload}
