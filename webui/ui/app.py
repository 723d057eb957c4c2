"""The Gradio UI of Easel: a quick-settings bar above one tab per mode.

``build_ui(services)`` is mounted by ``webui.server``; ``launch_kwargs()`` holds the app-level options
(theme, CSS) that Gradio 6 takes at launch / mount time rather than in ``gr.Blocks``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.services.ui_config import FILE_NAME as UI_CONFIG_FILE
from webui.services.ui_config import UiConfigStore
from webui.ui.clip_scores import CLIP_CSS
from webui.ui.controlnet import build_controlnet_tab
from webui.ui.extension_tabs import build_extension_tabs
from webui.ui.extensions_tab import build_extensions_tab
from webui.ui.extras import build_extras
from webui.ui.frontend import build_frontend, frontend_css, frontend_js
from webui.ui.history import build_history
from webui.ui.icons import icon_css
from webui.ui.img2img import build_img2img
from webui.ui.model_defaults import page_load_updates, wire_model_defaults
from webui.ui.network_cards import build_networks_tab
from webui.ui.params import PARAMS_CSS
from webui.ui.pnginfo import build_pnginfo
from webui.ui.quicksettings import build_quicksettings, refresh_values, wire_load_status
from webui.ui.send_to import add_send_buttons, wire_image_tabs
from webui.ui.settings import build_settings
from webui.ui.train import TRAIN_CSS, build_train_tab
from webui.ui.txt2img import build_txt2img
from webui.ui.ui_state import wire_ui_state

TXT2IMG_TAB = "txt2img"
PNGINFO_TAB = "pnginfo"
IMG2IMG_TAB = "img2img"
EXTRAS_TAB = "extras"
LORA_TAB = "lora"
CONTROLNET_TAB = "controlnet"
HISTORY_TAB = "history"
SETTINGS_TAB = "settings"
TRAIN_TAB = "train"

CSS = """
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
                controlnet_tab = build_controlnet_tab(
                    services,
                    targets={"txt2img": txt2img.extra["controlnet"], "img2img": img2img.extra["controlnet"]},
                    tabs=tabs,
                    tab_ids={"txt2img": TXT2IMG_TAB, "img2img": IMG2IMG_TAB},
                )
            with gr.Tab("Extras", id=EXTRAS_TAB, elem_id="tab_extras"):
                extras = build_extras(services)
            with gr.Tab("PNG Info", id=PNGINFO_TAB, elem_id="tab_pnginfo"):
                pnginfo = build_pnginfo(
                    services,
                    txt2img_fields=txt2img.fields,
                    tabs=tabs,
                    txt2img_tab_id=TXT2IMG_TAB,
                    txt2img_units=txt2img.extra["controlnet"].units,
                    txt2img_extensions=txt2img.extra["extensions"],
                )
                pnginfo_send = add_send_buttons("pnginfo")
            with gr.Tab("History", id=HISTORY_TAB, elem_id="tab_history") as history_tab:
                build_history(
                    services, tab=history_tab, tabs=tabs, txt2img=txt2img, img2img=img2img,
                    extras_image=extras["image"], controlnet_reference=controlnet_tab.reference,
                    tab_ids={"txt2img": TXT2IMG_TAB, "img2img": IMG2IMG_TAB, "extras": EXTRAS_TAB,
                             "controlnet": CONTROLNET_TAB},
                )  # fmt: skip
            with gr.Tab("Networks", id=LORA_TAB, elem_id="tab_lora") as networks_tab:
                build_networks_tab(services, txt2img.fields["prompt"], networks_tab, txt2img.gallery)
            if services.training is not None:
                with gr.Tab("Train", id=TRAIN_TAB, elem_id="tab_train"):
                    pickers = [txt2img.extra["lora_picker"], img2img.extra["lora_picker"]]
                    build_train_tab(
                        services, tabs=tabs, txt2img_tab_id=TXT2IMG_TAB,
                        txt2img_prompt=txt2img.fields["prompt"], lora_dropdowns=[p.dropdown for p in pickers],
                        checkpoint_dropdown=bar.checkpoint, switch_checkpoint=bar.switcher.request,
                    )  # fmt: skip
            build_extension_tabs(services)  # the extensions' own tabs, before Extensions and Settings
            if services.extensions is not None:
                with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                    build_extensions_tab(services)
            with gr.Tab("Settings", id=SETTINGS_TAB, elem_id="tab_settings") as settings_tab:
                build_settings(services, bar=bar, tab=settings_tab, txt2img_fields=txt2img.fields)
        txt2img.extra["network_cards"].use_gallery(txt2img.gallery)
        img2img.extra["network_cards"].use_gallery(img2img.gallery)
        wire_image_tabs(
            services, txt2img=txt2img, txt2img_buttons=txt2img_send, pnginfo=pnginfo,
            pnginfo_buttons=pnginfo_send, img2img=img2img, tabs=tabs, img2img_tab_id=IMG2IMG_TAB,
        )  # fmt: skip
        controlnet_models = [u.model for t in (txt2img, img2img) for u in t.extra["controlnet"].units]
        wire_load_status(services, bar, followers=[*controlnet_models, controlnet_tab.model])
        build_frontend(services, txt2img=txt2img, img2img=img2img)
        # A page opens at the selected checkpoint's default settings, with the values the user last used on
        # top (one load event); picking a checkpoint applies its defaults and keeps them as the user's.
        generation_tabs = {"txt2img": txt2img.fields, "img2img": img2img.fields}
        ui_state = wire_ui_state(
            blocks, UiConfigStore(services.settings.data_dir / UI_CONFIG_FILE), generation_tabs,
            generate={"txt2img": txt2img.generate, "img2img": img2img.extra["prompt_area"].generate},
            base=lambda: page_load_updates(services, list(generation_tabs.values())),
        )  # fmt: skip
        wire_model_defaults(
            services, blocks, bar, generation_tabs, on_page_load=False, applied=ui_state.save
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
    css = CSS + PARAMS_CSS + icon_css() + frontend_css() + CLIP_CSS + TRAIN_CSS
    return {"theme": theme, "css": css, "js": frontend_js(), "footer_links": ["api", "settings"]}
