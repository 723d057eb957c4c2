"""How the Settings tab shows each option: its group (A1111's sections), label, help line and widget.

Pure data, no gradio. One table, in the order the tab shows it; the widget follows from the option's type
(``bool``: checkbox; a number with a range: slider; ``choices``: dropdown; other text: text box). Ranges
come from the ``Options`` field's bounds where it has them, else from the table. ``dynamic`` choices are
filled by the UI from what is installed (checkpoints, VAEs, face restorers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from annotated_types import Ge, Le

from webui.domain.models import FP8_CHOICES
from webui.services.options import Options

Kind = Literal["checkbox", "slider", "dropdown", "text"]
Dynamic = Literal["checkpoints", "vaes", "face_restorers", "clip_models"]


@dataclass(frozen=True)
class OptionInfo:
    key: str
    group: str
    label: str
    help: str = ""
    choices: tuple[tuple[str, str], ...] = ()  # (label, value)
    dynamic: Dynamic | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None

    @property
    def annotation(self) -> Any:
        return Options.model_fields[self.key].annotation

    @property
    def kind(self) -> Kind:
        if self.annotation is bool:
            return "checkbox"
        if self.choices or self.dynamic:
            return "dropdown"
        if self.annotation in (int, float):
            return "slider"
        return "text"

    @property
    def is_int(self) -> bool:
        return self.annotation is int

    def bounds(self) -> tuple[float, float]:
        """The slider's range: the Options field's ``ge``/``le`` where set, else the table's."""
        low, high = self.minimum, self.maximum
        for item in Options.model_fields[self.key].metadata:
            if isinstance(item, Ge):
                low = float(item.ge)  # type: ignore[arg-type]
            elif isinstance(item, Le):
                high = float(item.le)  # type: ignore[arg-type]
        if low is None or high is None:
            raise ValueError(f"option {self.key!r} has no range for a slider")
        return low, high

    def matches(self, query: str) -> bool:
        """Whether a search for ``query`` shows this option (words of its label, key, help or group)."""
        text = f"{self.label} {self.key} {self.help} {self.group}".lower()
        return all(word in text for word in query.lower().split())


def _opt(key: str, group: str, label: str, help: str = "", **kwargs: Any) -> OptionInfo:
    return OptionInfo(key, group, label, help, **kwargs)


SAVING, SD, VAE, SAMPLER = "Saving images", "Stable Diffusion", "VAE", "Sampler parameters"
INFOTEXT, UI, PREVIEWS, FACES, CONTROLNET = (
    "Infotext",
    "User interface",
    "Live previews",
    "Face restoration",
    "ControlNet",
)
CLIP = "CLIP"

OPTION_TABLE: tuple[OptionInfo, ...] = (
    _opt("samples_save", SAVING, "Always save all generated images", "into outputs/<mode>-images/<date>/"),
    _opt(
        "samples_format",
        SAVING,
        "File format for images",
        "png keeps every pixel; jpg and webp are smaller",
        choices=(("png", "png"), ("jpg", "jpg"), ("webp", "webp")),
    ),
    _opt("jpeg_quality", SAVING, "Quality for saved jpeg and webp images", "1-100", step=1),
    _opt("grid_save", SAVING, "Always save all generated image grids", "into outputs/<mode>-grids/<date>/"),
    _opt(
        "grid_format",
        SAVING,
        "File format for grids",
        "X/Y/Z plot and prompt matrix grids",
        choices=(("png", "png"), ("jpg", "jpg"), ("webp", "webp")),
    ),
    _opt(
        "enable_pnginfo",
        SAVING,
        "Save generation parameters in the image files",
        "PNG text chunk / EXIF comment, read back by PNG Info",
    ),
    _opt(
        "save_images_before_highres_fix",
        SAVING,
        "Save a copy of the image before applying hires fix",
        "the first pass is saved and shown too",
    ),
    _opt(
        "sd_model_checkpoint",
        SD,
        "Stable Diffusion checkpoint",
        "loads in the background when applied; the bar above the tabs shows the same choice",
        dynamic="checkpoints",
    ),
    _opt(
        "CLIP_stop_at_last_layers",
        SD,
        "Clip skip",
        "stop the text encoder this many layers from the end (1: use all)",
        step=1,
    ),
    _opt(
        "hires_fix_refiner_pass",
        SD,
        "Hires fix: which pass to enable refiner for",
        "with hires fix on, the refiner acts in this pass (or both)",
        choices=tuple((name, name) for name in ("first pass", "second pass", "both passes")),
    ),
    _opt(
        "refiner_switch_by_sample_steps",
        SD,
        "Switch to the refiner by sampling steps instead of by noise level",
        "off: once 'Switch at' of the noise is removed (A1111's default); on: after that share of the steps",
    ),
    _opt(
        "fp8_storage",
        SD,
        "FP8 weight",
        "keep the UNet's and text encoders' weights in fp8: about half the memory of fp16, a little less "
        "detail; the checkpoint loads again when this changes",
        choices=tuple((name, name) for name in FP8_CHOICES),
    ),
    _opt(
        "easel_compile_unet",
        SD,
        "Compile the UNet (torch.compile)",
        "faster steps once compiled; the first image at each new size waits for the compile (seconds to "
        "minutes), later ones and LoRA changes do not; not with --medvram / --lowvram or FP8 weight",
    ),
    _opt(
        "easel_cuda_graphs",
        SD,
        "Compiled UNet: replay each step as CUDA graphs",
        "with the compiled UNet on a CUDA card, a step's kernels launch as one graph (faster at small "
        "batches); each image size keeps its graphs' memory on the card",
    ),
    _opt(
        "easel_channels_last",
        SD,
        "Channels-last weights (UNet and VAE)",
        "the memory layout of the convolutions' weights: channels-last is faster on CUDA cards, NCHW on "
        "the CPU; Automatic picks by device",
        choices=tuple((name, name) for name in ("Automatic", "On", "Off")),
    ),
    _opt(
        "randn_source",
        SD,
        "Random number generator source",
        "CPU gives the same image for a seed on every device; GPU is faster but differs between cards",
        choices=(("CPU", "CPU"), ("GPU", "GPU")),
    ),
    _opt(
        "sd_vae",
        VAE,
        "SD VAE",
        "Automatic and None: the checkpoint's own VAE; or a file from models/VAE",
        dynamic="vaes",
    ),
    _opt(
        "eta_ddim",
        SAMPLER,
        "Eta for DDIM",
        "noise added at each DDIM step (0: deterministic)",
        minimum=0.0,
        maximum=1.0,
        step=0.01,
    ),
    _opt("add_model_hash_to_info", INFOTEXT, "Add model hash to the generation information"),
    _opt("add_model_name_to_info", INFOTEXT, "Add model name to the generation information"),
    _opt("add_version_to_infotext", INFOTEXT, "Add Easel's version to the generation information"),
    _opt(
        "easel_apply_model_defaults",
        UI,
        "Apply a checkpoint's default settings when it is chosen",
        "size, sampler, schedule type, steps and CFG of txt2img and img2img; Clip skip and VAE when declared",
    ),
    _opt("send_seed", UI, "Send seed when sending prompt or image to other interface"),
    _opt("send_size", UI, "Send size when sending prompt or image to another interface"),
    _opt(
        "keyedit_precision_attention",
        UI,
        "Ctrl+Up/Down precision when editing (attention:1.1)",
        "the step by which Ctrl+Up/Down changes the emphasis of the selected prompt text",
    ),
    _opt("notification_audio", UI, "Play a sound when a long generation finishes"),
    _opt("notification_volume", UI, "Notification sound volume", "in percent"),
    _opt(
        "easel_notification_browser",
        UI,
        "Show a browser notification when a long generation finishes",
        "the browser asks for permission the first time",
    ),
    _opt(
        "easel_notification_min_seconds",
        UI,
        "A generation is long after (seconds)",
        "sound and notification only for jobs that took at least this long",
        maximum=600,
    ),
    _opt("live_previews_enable", PREVIEWS, "Show live previews of the created image"),
    _opt(
        "show_progress_every_n_steps",
        PREVIEWS,
        "Live preview display period",
        "a new preview every N sampling steps; -1: only when the batch is done",
        step=1,
    ),
    _opt(
        "face_restoration_model",
        FACES,
        "Face restoration",
        "the restorer Restore faces runs (models/GFPGAN, models/Codeformer)",
        dynamic="face_restorers",
    ),
    _opt(
        "code_former_weight",
        FACES,
        "CodeFormer weight",
        "0: strongest effect, 1: weakest",
        step=0.01,
    ),
    _opt(
        "control_net_unit_count",
        CONTROLNET,
        "Multi-ControlNet: ControlNet unit number",
        "units shown in txt2img and img2img; applies after a restart",
        step=1,
    ),
    _opt("control_net_model_cache_size", CONTROLNET, "Model cache size", "ControlNets kept loaded", step=1),
    _opt("control_net_no_detectmap", CONTROLNET, "Do not append detectmap to output"),
    _opt(
        "control_net_detectmap_autosaving",
        CONTROLNET,
        "Allow detectmap auto saving",
        "beside the images, for units that ask for it",
    ),
    _opt(
        "control_net_allow_download",
        CONTROLNET,
        "Allow preprocessor model downloads",
        "missing annotator weights are fetched into models/annotators",
    ),
    _opt(
        "easel_clip_model",
        CLIP,
        "CLIP model",
        "for scores and interrogation (models/clip); Automatic: the first that is not Easel's reference CLIP",
        dynamic="clip_models",
    ),
    _opt(
        "easel_clip_device",
        CLIP,
        "CLIP device",
        "cpu keeps the GPU's memory for generation; cuda is faster (falls back to cpu without CUDA)",
        choices=(("cpu", "cpu"), ("cuda", "cuda")),
    ),
    _opt(
        "easel_clip_score",
        CLIP,
        "Score images with CLIP after generation",
        "shown on each image and saved in the infotext",
    ),
)

# Options the API keeps for A1111 clients that Easel does not use: not shown, so no control does nothing.
NOT_SHOWN = {
    "sd_checkpoints_limit": "Easel's model cache size is the --models-in-ram flag",
    "eta_ancestral": "ancestral samplers use their fixed eta",
    "outdir_samples": "outputs go to the data dir's outputs/ folder",
    "outdir_txt2img_samples": "outputs go to the data dir's outputs/ folder",
    "disabled_extensions": "switched in the Extensions tab",
}

OPTIONS_BY_KEY = {info.key: info for info in OPTION_TABLE}


def groups() -> list[tuple[str, list[OptionInfo]]]:
    """The table as ``(group, options)`` in order of first appearance."""
    ordered: dict[str, list[OptionInfo]] = {}
    for info in OPTION_TABLE:
        ordered.setdefault(info.group, []).append(info)
    return list(ordered.items())
