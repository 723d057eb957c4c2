"""The X/Y/Z plot's widgets, in A1111's ``script_args`` order (plus Easel's CLIP annotation last)."""

from __future__ import annotations

from typing import Any

from webui.extensions.api import Easel, Tab

from .axes import find_axis, shown_axes, split_values


def _choices(easel: Easel, tab: Tab, label: str) -> list[str] | None:
    axis = find_axis(tab, label)
    if axis.choices is None:
        return None
    try:
        return list(axis.choices(easel))
    except Exception:  # a list that cannot be read now leaves the text box to type into
        return None


def build(easel: Easel, tab: Tab) -> list[Any]:
    import gradio as gr

    labels = [axis.label for axis in shown_axes(tab)]
    rows = []
    for name, default in (("X", "Seed"), ("Y", "Nothing"), ("Z", "Nothing")):
        with gr.Row():
            kind = gr.Dropdown(
                labels, value=default, label=f"{name} type", scale=2, elem_id=f"xyz_{tab}_{name}_type"
            )
            text = gr.Textbox(
                "",
                label=f"{name} values",
                placeholder='e.g. 1-5, 1-10 (+2), 1-10 [5], or a, b, "c, d"',
                scale=5,
                elem_id=f"xyz_{tab}_{name}_values",
            )
            dropdown = gr.Dropdown(
                [],
                value=[],
                multiselect=True,
                label=f"{name} values",
                visible=False,
                scale=5,
                elem_id=f"xyz_{tab}_{name}_values_dropdown",
            )
            fill = gr.Button(
                "Fill", visible=False, size="sm", scale=0, min_width=60, elem_id=f"xyz_{tab}_{name}_fill"
            )
        rows.append((kind, text, dropdown, fill))

    with gr.Row():
        draw_legend = gr.Checkbox(label="Draw legend", value=True, min_width=150)
        no_fixed_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False, min_width=150)
        include_lone_images = gr.Checkbox(label="Include Sub Images", value=False, min_width=150)
        include_sub_grids = gr.Checkbox(label="Include Sub Grids", value=False, min_width=150)
    with gr.Row():
        vary_x = gr.Checkbox(label="Vary seeds for X", value=False, min_width=100)
        vary_y = gr.Checkbox(label="Vary seeds for Y", value=False, min_width=100)
        vary_z = gr.Checkbox(label="Vary seeds for Z", value=False, min_width=100)
    with gr.Row():
        csv_mode = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False, min_width=150)
        clip_annotate = gr.Checkbox(label="Annotate cells with their CLIP score", value=False, min_width=150)
    margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2)
    with gr.Row():
        swap_xy = gr.Button("Swap X/Y axes", size="sm")
        swap_yz = gr.Button("Swap Y/Z axes", size="sm")
        swap_xz = gr.Button("Swap X/Z axes", size="sm")

    def select_axis(label: str, text: str, picked: list[str] | None, csv: bool) -> tuple[Any, Any, Any]:
        """Show the multi-select for an axis with choices (the text box with "use text inputs"), carrying
        the values over between the two."""
        choices = _choices(easel, tab, label)
        if choices is None:
            return (
                gr.update(visible=False),
                gr.update(visible=True),
                gr.update(visible=False, choices=[], value=[]),
            )
        if csv:
            if picked:
                text = ", ".join(f'"{v}"' if "," in v else v for v in picked if v in choices)
            return (
                gr.update(visible=True),
                gr.update(visible=True, value=text),
                gr.update(visible=False, value=[]),
            )
        by_lower = {choice.lower(): choice for choice in choices}
        carried = [by_lower[v.lower()] for v in split_values(text or "") if v.lower() in by_lower]
        value = carried or [v for v in (picked or []) if v in choices]
        return (
            gr.update(visible=True),
            gr.update(visible=False, value=""),
            gr.update(visible=True, choices=choices, value=value),
        )

    def fill(label: str, csv: bool) -> tuple[Any, Any]:
        choices = _choices(easel, tab, label) or []
        if csv:
            return gr.update(value=", ".join(f'"{v}"' if "," in v else v for v in choices)), gr.update()
        return gr.update(), gr.update(choices=choices, value=choices)

    for kind, text, dropdown, fill_button in rows:
        kind.change(
            select_axis,
            [kind, text, dropdown, csv_mode],
            [fill_button, text, dropdown],
            show_progress="hidden",
        )
        fill_button.click(fill, [kind, csv_mode], [text, dropdown], show_progress="hidden")

    def change_mode(csv: bool, *values: Any) -> list[Any]:
        updates: list[Any] = []
        for index in range(3):
            updates.extend(select_axis(values[3 * index], values[3 * index + 1], values[3 * index + 2], csv))
        return updates

    all_inputs = [widget for kind, text, dropdown, _ in rows for widget in (kind, text, dropdown)]
    all_outputs = [
        widget for _, text, dropdown, fill_button in rows for widget in (fill_button, text, dropdown)
    ]
    csv_mode.change(change_mode, [csv_mode, *all_inputs], all_outputs, show_progress="hidden")

    def swap(
        a_kind: str, a_text: str, a_pick: list[str], b_kind: str, b_text: str, b_pick: list[str]
    ) -> tuple:
        return b_kind, b_text, b_pick, a_kind, a_text, a_pick

    for button, (first, second) in ((swap_xy, (0, 1)), (swap_yz, (1, 2)), (swap_xz, (0, 2))):
        widgets = [*rows[first][:3], *rows[second][:3]]
        button.click(swap, widgets, widgets, show_progress="hidden")

    (x_kind, x_text, x_drop, _), (y_kind, y_text, y_drop, _), (z_kind, z_text, z_drop, _) = rows
    return [
        x_kind, x_text, x_drop, y_kind, y_text, y_drop, z_kind, z_text, z_drop,
        draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_x, vary_y, vary_z,
        margin_size, csv_mode, clip_annotate,
    ]  # fmt: skip
