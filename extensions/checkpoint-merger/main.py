"""The Checkpoint Merger tab (A1111's merger), built only on Easel's extension API.

Models A, B and C are picked from the checkpoint list (single-file ``.safetensors``), mixed by the chosen
method and multiplier, and saved as a new checkpoint in models/Stable-diffusion through
``ext.easel.merge_checkpoints``, which streams the merge tensor by tensor, writes A1111's recipe metadata
and lists the result. The same merge is ``POST /easel/v1/merge`` over the API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from webui.extensions.api import Easel, Extension

TAB_TITLE = "Checkpoint Merger"
NO_VAE = "None"
# A1111's radio labels and order -> the merger's method ids.
METHODS = {
    "No interpolation": "no_interpolation",
    "Weighted sum": "weighted_sum",
    "Add difference": "add_difference",
}
FORMULAS = {
    "No interpolation": "Result = A (to bake in a VAE or change the precision)",
    "Weighted sum": "Result = A · (1 − M) + B · M",
    "Add difference": "Result = A + (B − C) · M",
}
PRECISIONS = ("fp16", "fp32")
Progress = Callable[[str, float], None]


def setup(ext: Extension) -> None:
    ext.add_tab(TAB_TITLE, lambda: build_tab(ext.easel))


def checkpoint_choices(easel: Easel) -> list[str]:
    """Titles of the checkpoints the merger can read: single ``.safetensors`` files."""
    return [info.title for info in easel.checkpoints() if info.path.suffix.lower() == ".safetensors"]


def vae_choices(easel: Easel) -> list[str]:
    return [NO_VAE, *easel.vaes()]


def formula(method: str) -> str:
    return FORMULAS.get(method, "")


def merge(
    easel: Easel,
    primary: str | None,
    secondary: str | None,
    tertiary: str | None,
    method: str,
    multiplier: float,
    name: str,
    precision: str,
    bake_vae: str | None,
    copy_config: bool,
    progress: Progress | None = None,
) -> tuple[bool, str]:
    """Run one merge; ``(True, message naming the new checkpoint)`` or ``(False, why it was not made)``."""
    method_id = METHODS.get(method)
    if method_id is None:
        return False, f"Choose an interpolation method: {', '.join(METHODS)}."
    if not primary:
        return False, "Choose the primary model (A)."
    if method_id != "no_interpolation" and not secondary:
        return False, f"{method} needs a secondary model (B)."
    if method_id == "add_difference" and not tertiary:
        return False, "Add difference needs a tertiary model (C)."
    try:
        title = easel.merge_checkpoints(
            primary,
            secondary or "",
            tertiary or None,
            method=method_id,
            multiplier=float(multiplier),
            name=name or "",
            precision=precision,
            bake_vae=bake_vae if bake_vae and bake_vae != NO_VAE else None,
            copy_config=bool(copy_config),
            progress=progress,
        )
    except Exception as exc:  # every refusal carries its reason; the tab stays usable
        return False, str(exc) or type(exc).__name__
    return True, f"Checkpoint saved: {title}. Refresh the checkpoint list at the top to select it."


def build_tab(easel: Easel) -> None:
    import gradio as gr

    checkpoints = checkpoint_choices(easel)
    gr.Markdown(
        "A weighted sum of two checkpoints, or a third one's difference added: a new `.safetensors` in "
        "models/Stable-diffusion with the merge recipe in its metadata. Models of one family only; "
        "`.ckpt` files and diffusers folders must be converted to `.safetensors` first."
    )
    with gr.Row():
        primary = gr.Dropdown(
            checkpoints, value=None, label="Primary model (A)", elem_id="merger_primary", scale=3
        )
        secondary = gr.Dropdown(
            checkpoints, value=None, label="Secondary model (B)", elem_id="merger_secondary", scale=3
        )
        tertiary = gr.Dropdown(
            checkpoints, value=None, label="Tertiary model (C)", elem_id="merger_tertiary", scale=3
        )
        refresh = gr.Button("Refresh lists", elem_id="merger_refresh", scale=1, min_width=120)
    name = gr.Textbox(
        label="Custom name (optional)",
        placeholder="empty: named after the recipe, e.g. 0.7(a) + 0.3(b)",
        elem_id="merger_name",
    )
    multiplier = gr.Slider(
        0.0,
        1.0,
        value=0.3,
        step=0.05,
        label="Multiplier (M) - set to 0 to get model A",
        elem_id="merger_multiplier",
    )
    with gr.Row():
        method = gr.Radio(
            list(METHODS), value="Weighted sum", label="Interpolation method", elem_id="merger_method"
        )
        result_formula = gr.Markdown(formula("Weighted sum"), elem_id="merger_formula")
    with gr.Row():
        precision = gr.Radio(
            list(PRECISIONS), value="fp16", label="Precision", info="of every weight in the new file",
            elem_id="merger_precision",
        )  # fmt: skip
        bake_vae = gr.Dropdown(
            vae_choices(easel),
            value=NO_VAE,
            label="Bake in VAE",
            info="from models/VAE",
            elem_id="merger_vae",
        )
        copy_config = gr.Checkbox(
            value=True, label="Copy config (.yaml / .json) from A, B or C", elem_id="merger_copy_config"
        )
    run = gr.Button("Merge", variant="primary", elem_id="merger_merge")
    status = gr.Markdown(elem_id="merger_result")

    def refreshed(*selected: str | None) -> list[Any]:
        choices = [
            info.title for info in easel.refresh_checkpoints() if info.path.suffix.lower() == ".safetensors"
        ]
        return [
            *(gr.Dropdown(choices=choices, value=value if value in choices else None) for value in selected),
            gr.Dropdown(choices=vae_choices(easel)),
        ]

    def run_merge(
        a: str | None,
        b: str | None,
        c: str | None,
        chosen_method: str,
        m: float,
        new_name: str,
        chosen_precision: str,
        vae: str | None,
        copy: bool,
        progress: Any = gr.Progress(),
    ) -> list[Any]:
        def report(text: str, fraction: float) -> None:
            progress(fraction, desc=text)

        ok, message = merge(easel, a, b, c, chosen_method, m, new_name, chosen_precision, vae, copy, report)
        text = message if ok else f"**Not merged:** {message}"
        choices = checkpoint_choices(easel)
        return [*(gr.Dropdown(choices=choices) for _ in range(3)), text]

    models = [primary, secondary, tertiary]
    refresh.click(refreshed, inputs=models, outputs=[*models, bake_vae])
    method.change(formula, inputs=method, outputs=result_formula)
    run.click(
        run_merge,
        inputs=[*models, method, multiplier, name, precision, bake_vae, copy_config],
        outputs=[*models, status],
        concurrency_limit=1,
    )
