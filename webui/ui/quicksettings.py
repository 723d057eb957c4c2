"""The bar above the tabs: checkpoint, VAE and Clip skip, plus the model load status.

Changing a value writes the A1111 option (``sd_model_checkpoint``, ``sd_vae``, ``CLIP_stop_at_last_layers``).
A checkpoint change is queued on the generation service from a background thread; the status line polls
the model service's load state every second, so progress and errors show without blocking the page; a
checkpoint that fails to load does not stay shown as selected.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.ui import choices
from webui.ui.controlnet import MODEL_NONE, model_choices
from webui.ui.icons import icon_button
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)

STATUS_POLL_SECONDS = 1.0


class CheckpointSwitcher:
    """Loads a chosen checkpoint in the background and describes what the loader is doing."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self._lock = threading.Lock()
        self._pending: str | None = None

    def request(self, title: str) -> str:
        state = self.services.models.load_state
        with self._lock:
            self._pending = title
        state.error = None
        threading.Thread(target=self._load, args=(title,), name="easel-ui-load", daemon=True).start()
        return self.status()

    def _load(self, title: str) -> None:
        state = self.services.models.load_state
        try:
            loaded = self.services.generation.load_model(title)
            log.info("checkpoint loaded: %s", loaded)
        except Exception as exc:  # reported in the status line; the page keeps working
            state.error = user_message(exc)
            log.warning("could not load checkpoint %r: %s", title, exc)
        finally:
            with self._lock:
                if self._pending == title:
                    self._pending = None

    @property
    def pending(self) -> str | None:
        with self._lock:
            return self._pending

    def settled_key(self) -> str | None:
        """``None`` while a load runs or waits; else a key that changes whenever a load has ended."""
        state = self.services.models.load_state
        if state.loading or self.pending:
            return None
        return f"{state.loaded_name}\n{state.error}"

    def status(self) -> str:
        generation = self.services.generation
        if getattr(generation, "cluster_factory", None) is not None:  # --ray-address: workers load models
            if generation._cluster is None:
                return "Starting the GPU workers…"
            selected = choices.selected_checkpoint(self.services) or "no checkpoint"
            return f"{selected} for the workers · {generation._cluster.summary()}"
        return self._status()

    def _status(self) -> str:
        state = self.services.models.load_state
        with self._lock:
            pending = self._pending
        if state.loading:
            return f"{state.message or 'Loading'} ({state.fraction:.0%})"
        if pending:
            return f"Queued: {pending} will load when the current job finishes."
        if state.error:
            kept = f" Still using {state.loaded_name}." if state.loaded_name else ""
            return f"Error: {state.error}{kept}"
        if state.loaded_name:
            return f"Loaded {state.loaded_name}"
        if not self.services.models.checkpoints():
            return ""  # the notice under it says where to put one
        return "No checkpoint loaded yet; the selected one loads with the first generation."


@dataclass
class QuickSettings:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    vae: gr.Dropdown
    clip_skip: gr.Slider
    status: gr.Markdown
    notice: gr.Markdown
    switcher: CheckpointSwitcher


def _notice_update(services: Any) -> dict[str, Any]:
    missing = not services.models.checkpoints()
    message = f"Error: {services.generation.no_model_message()}" if missing else ""
    return gr.update(value=message, visible=missing)


def build_quicksettings(services: Any) -> QuickSettings:
    opts = services.options.get()
    switcher = CheckpointSwitcher(services)
    titles = choices.checkpoint_titles(services)
    with gr.Row(equal_height=True):
        checkpoint = gr.Dropdown(
            choices=titles,
            value=choices.selected_checkpoint(services),
            label="Stable Diffusion checkpoint",
            allow_custom_value=True,
            elem_id="setting_sd_model_checkpoint",
            scale=4,
        )
        refresh = icon_button(
            "refresh", "Refresh checkpoints", elem_id="refresh_sd_model_checkpoint", min_width=48
        )
        vae = gr.Dropdown(
            choices=choices.vae_choices(services),
            value=opts.sd_vae,
            label="SD VAE",
            allow_custom_value=True,
            elem_id="setting_sd_vae",
            scale=2,
        )
        clip_skip = gr.Slider(
            1,
            12,
            value=opts.CLIP_stop_at_last_layers,
            step=1,
            precision=0,
            label="Clip skip",
            elem_id="setting_CLIP_stop_at_last_layers",
            scale=2,
        )
    status = gr.Markdown(switcher.status(), elem_id="sd_model_status")
    notice = gr.Markdown(elem_id="no_model_notice", **_notice_kwargs(_notice_update(services)))
    bar = QuickSettings(checkpoint, refresh, vae, clip_skip, status, notice, switcher)
    _wire(services, bar)
    return bar


def _notice_kwargs(update: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in update.items() if key in ("value", "visible")}


def _wire(services: Any, bar: QuickSettings) -> None:
    def on_checkpoint(title: str | None) -> str:
        if not title:
            return bar.switcher.status()
        choose_declared_vae(services, title)  # before the load, which reads the VAE option
        return bar.switcher.request(title)

    def on_refresh() -> tuple[Any, Any, str, Any]:
        services.models.refresh()
        return (
            gr.update(choices=choices.checkpoint_titles(services), value=shown_checkpoint(services)),
            gr.update(choices=choices.vae_choices(services)),
            bar.switcher.status(),
            _notice_update(services),
        )

    def set_option(name: str, value: Any) -> None:
        if value is None or getattr(services.options.get(), name, None) == value:
            return
        try:
            services.options.update({name: value})
        except Exception as exc:  # a bad value is reported, the old option stays
            gr.Warning(user_message(exc))

    def on_vae(value: str | None) -> None:
        set_option("sd_vae", value)

    def on_clip_skip(value: float | None) -> None:
        set_option("CLIP_stop_at_last_layers", int(value) if value is not None else None)

    bar.checkpoint.input(on_checkpoint, inputs=bar.checkpoint, outputs=bar.status, api_visibility="private")
    bar.refresh.click(
        on_refresh,
        outputs=[bar.checkpoint, bar.vae, bar.status, bar.notice],
        api_name="refresh_checkpoints",
    )
    bar.vae.input(on_vae, inputs=bar.vae, api_visibility="private")
    bar.clip_skip.change(on_clip_skip, inputs=bar.clip_skip, api_visibility="private", show_progress="hidden")


def wire_load_status(services: Any, bar: QuickSettings, followers: list[gr.Dropdown] | None = None) -> None:
    """Poll the loader's state every second into the status line. When a load ends (here, from the API or
    the Settings tab), the checkpoint list shows the model actually loaded — after a failure the one still
    in use, or none — and the ``followers`` (model lists that depend on the loaded family, e.g. ControlNet)
    get their choices again, keeping their value where it still fits."""
    followers = list(followers or [])
    seen = gr.State(None)

    def poll(last: str | None, *current: str | None) -> dict[Any, Any]:
        out: dict[Any, Any] = {bar.status: bar.switcher.status(), bar.notice: _notice_update(services)}
        key = bar.switcher.settled_key()
        if key is None or key == last:
            return out
        out[seen] = key
        out[bar.checkpoint] = gr.update(
            choices=choices.checkpoint_titles(services), value=shown_checkpoint(services)
        )
        if followers:
            names = model_choices(services)
            for widget, value in zip(followers, current, strict=True):
                out[widget] = gr.update(choices=names, value=value if value in names else MODEL_NONE)
        return out

    timer = gr.Timer(STATUS_POLL_SECONDS)
    timer.tick(
        poll,
        inputs=[seen, *followers],
        outputs=[bar.status, bar.notice, bar.checkpoint, seen, *followers],
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )


def shown_checkpoint(services: Any) -> str | None:
    """What the checkpoint list shows: the loaded model; none after a failed load with nothing loaded;
    before any load, the one that will load."""
    state = services.models.load_state
    if state.loaded_name:
        return str(state.loaded_name)
    if state.error:
        return None
    return choices.selected_checkpoint(services)


def choose_declared_vae(services: Any, title: str) -> None:
    """Set the VAE option to the one ``title``'s sidecar declares (if defaults apply and it is installed)."""
    from webui.ui.model_defaults import declared_vae

    vae = declared_vae(services, title)
    if vae is None or vae == services.options.get().sd_vae:
        return
    try:
        services.options.update({"sd_vae": vae})
    except Exception as exc:  # a bad value is reported, the old VAE stays
        gr.Warning(user_message(exc))


def refresh_values(services: Any, bar: QuickSettings) -> dict[Any, Any]:
    """Current values for a freshly opened page (options may have changed since the UI was built)."""
    opts = services.options.get()
    return {
        bar.checkpoint: gr.update(
            choices=choices.checkpoint_titles(services), value=shown_checkpoint(services)
        ),
        bar.vae: gr.update(choices=choices.vae_choices(services), value=opts.sd_vae),
        bar.clip_skip: opts.CLIP_stop_at_last_layers,
        bar.status: bar.switcher.status(),
        bar.notice: _notice_update(services),
    }
