"""The Gradio UI of Easel: a quick-settings bar above one tab per mode.

``build_ui(services)`` is mounted by ``webui.server``; ``launch_kwargs()`` holds the app-level options
(theme, CSS) that Gradio 6 takes at launch / mount time rather than in ``gr.Blocks``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.services.ui_config import FILE_NAME as UI_CONFIG_FILE
from webui.services.ui_config import UiConfigStore
from webui.ui.controlnet import build_controlnet_tab
from webui.ui.extras import build_extras
from webui.ui.icons import icon_css
from webui.ui.img2img import build_img2img
from webui.ui.lora import build_lora_tab
from webui.ui.params import PARAMS_CSS
from webui.ui.pnginfo import build_pnginfo
from webui.ui.quicksettings import build_quicksettings, refresh_values
from webui.ui.send_to import add_send_buttons, wire_image_tabs
from webui.ui.txt2img import build_txt2img
from webui.ui.ui_state import wire_ui_state

TXT2IMG_TAB = "txt2img"
PNGINFO_TAB = "pnginfo"
IMG2IMG_TAB = "img2img"
EXTRAS_TAB = "extras"
LORA_TAB = "lora"
CONTROLNET_TAB = "controlnet"

CSS = """
.easel-error { border: 1px solid #d9534f; border-radius: 6px; padding: 0.5em 0.75em; color: #a94442;
  background: rgba(217, 83, 79, 0.08); }
#txt2img_generate { min-height: 4.5em; }
#txt2img_progress { min-height: 1.5em; }
"""


def build_ui(services: Any) -> gr.Blocks:
    with gr.Blocks(title="Easel", analytics_enabled=False) as blocks:
        bar = build_quicksettings(services)
        with gr.Tabs(selected=TXT2IMG_TAB, elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id=TXT2IMG_TAB, elem_id="tab_txt2img"):
                txt2img = build_txt2img(services, clip_skip=bar.clip_skip)
                txt2img_send = add_send_buttons("txt2img")
            with gr.Tab("img2img", id=IMG2IMG_TAB, elem_id="tab_img2img"):
                img2img = build_img2img(services, clip_skip=bar.clip_skip)
            with gr.Tab("ControlNet", id=CONTROLNET_TAB, elem_id="tab_controlnet"):
                build_controlnet_tab(
                    services,
                    targets={"txt2img": txt2img.extra["controlnet"], "img2img": img2img.extra["controlnet"]},
                    tabs=tabs,
                    tab_ids={"txt2img": TXT2IMG_TAB, "img2img": IMG2IMG_TAB},
                )
            with gr.Tab("Extras", id=EXTRAS_TAB, elem_id="tab_extras"):
                build_extras(services)
            with gr.Tab("PNG Info", id=PNGINFO_TAB, elem_id="tab_pnginfo"):
                pnginfo = build_pnginfo(
                    services,
                    txt2img_fields=txt2img.fields,
                    tabs=tabs,
                    txt2img_tab_id=TXT2IMG_TAB,
                    txt2img_units=txt2img.extra["controlnet"].units,
                )
                pnginfo_send = add_send_buttons("pnginfo")
            with gr.Tab("Lora", id=LORA_TAB, elem_id="tab_lora"):
                prompt = txt2img.fields["prompt"]
                build_lora_tab(services, prompt=prompt, tabs=tabs, prompt_tab_id=TXT2IMG_TAB)
        wire_image_tabs(
            services, txt2img=txt2img, txt2img_buttons=txt2img_send, pnginfo=pnginfo,
            pnginfo_buttons=pnginfo_send, img2img=img2img, tabs=tabs, img2img_tab_id=IMG2IMG_TAB,
        )  # fmt: skip
        ui_config = UiConfigStore(services.settings.data_dir / UI_CONFIG_FILE)
        wire_ui_state(
            blocks, ui_config, {"txt2img": txt2img.fields, "img2img": img2img.fields},
            generate={"txt2img": txt2img.generate, "img2img": img2img.extra["prompt_area"].generate},
        )  # fmt: skip
        outputs = [bar.checkpoint, bar.vae, bar.clip_skip, bar.status, bar.notice]
        blocks.load(
            lambda: refresh_values(services, bar), outputs=outputs, api_visibility="private", queue=False
        )
    blocks.queue(default_concurrency_limit=1)
    return blocks


def launch_kwargs() -> dict[str, Any]:
    """Extra keyword arguments for ``gr.mount_gradio_app`` / ``Blocks.launch``."""
    # System fonts: a self-hosted studio must render without fetching web fonts.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    return {"theme": theme, "css": CSS + PARAMS_CSS + icon_css(), "footer_links": ["api", "settings"]}
