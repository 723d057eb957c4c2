"""The ControlNet preprocessor ("annotator") table, in the names and shapes of A1111's sd-webui-controlnet.

Pure data, no torch. :mod:`webui.runtime.controlnet.preprocessors` runs the modules listed here; the API
serves :meth:`PreprocessorInfo.module_detail` (``/controlnet/module_list``) and :func:`control_types`
(``/controlnet/control_types``) from it; requests name a module, which :func:`resolve_module` checks.

Names are the ones the extension shows (``depth_midas``, ``softedge_hed``, ``lineart_realistic``); its
older internal names (``depth``, ``hed``, ``pidinet``, ``fake_scribble``, ``lineart`` ...) are accepted as
aliases, and so are the two long labels (``invert (from white bg & black line)``). Unlike the extension,
an unknown module is an error listing the valid names, not a silent fall back to ``none``.

Sliders are positional, as in the extension's ``module_detail``: slot 0 is the processing resolution
(``processor_res``), slot 1 ``threshold_a``, slot 2 ``threshold_b``; a module without a resolution but with
a threshold (``tile_resample``) has ``None`` (JSON ``null``) in slot 0. Unlike the extension, which sends
``"sliders": []`` for modules missing from its slider table even though its UI shows them a 512
resolution slider, every module that takes a resolution lists it here.

``model_free`` keeps the extension's meaning: the module works *without a ControlNet model* (its
reference-only family, none of which is offered here), so it is ``False`` everywhere. Whether a module
needs annotator weights is :attr:`PreprocessorInfo.needs_weights` (non-empty ``weight_files``, or a
``weight_folder``).

The segmentation modules (``seg_ofade20k``, ``seg_ofcoco``, ``seg_ufade20k``; the "Segmentation" control
type) paint ADE20k's 150 class colours (COCO panoptic's 133 for ``seg_ofcoco``), as the seg ControlNets
expect. Each first looks for a transformers-format model folder under ``models/annotators``
(:attr:`PreprocessorInfo.weight_folder`: ``oneformer_ade20k``, ``oneformer_coco``, ``upernet_ade20k``)
holding any semantic-segmentation model transformers runs (OneFormer, Mask2Former, UperNet, SegFormer ...)
trained on that dataset. Else the two OneFormer modules read the extension's detectron2 files
(``weight_files``), converted to transformers' OneFormer on load. ``seg_ufade20k`` has no such fallback:
its file, mmsegmentation's UniFormer ``upernet_global_small.pth``, needs a backbone transformers lacks.

``dw_openpose_full`` (DWPose: a YOLOX person detector, then RTMPose on COCO-WholeBody's 133 keypoints, drawn
as OpenPose) loads the extension's ONNX files (:data:`DWPOSE_FILES`) or their TorchScript exports; the
``dw_openpose``, ``dw_openpose_hand``, ``dw_openpose_face`` and ``dw_openpose_faceonly`` variants draw the
parts their ``openpose_*`` namesakes draw, from the same two networks.

``depth_anything`` and ``depth_anything_v2`` (Depth Anything v1 and v2) load the published single files
(:data:`DEPTH_ANYTHING_FILES`: v1's ``depth_anything_vit{l,b,s}14.pth``, v2's ``depth_anything_v2_vit{l,b,s}``
as ``.safetensors`` or ``.pth``) or a transformers-format folder (:data:`DEPTH_ANYTHING_FOLDERS`), the first
one found; ``weight_files`` names the extension's default (ViT-L), the file downloaded when none is there.
These files are not under lllyasviel/Annotators: :data:`ANNOTATOR_URLS` says where each one is.

Left out, with the reason:

- ``seg_anime_face`` and ``mobile_sam``: their networks are not part of controlnet-aux 0.0.10 or
  transformers; Segment Anything paints random colours per mask, which a seg ControlNet would misread.
- ``t2ia_*``, ``threshold``, ``normal_midas``, ``depth_leres``, ``softedge_teed``, ``mediapipe_face``,
  ``reference_*``, ``recolor_*``: not offered (yet).

``ip-adapter_face_id`` and ``ip-adapter_face_id_plus`` feed IP-Adapter FaceID models: InsightFace's
``buffalo_l`` face detector and ArcFace recogniser (:data:`FACE_FILES`, looked for in
``models/insightface/models/buffalo_l`` as the extension, Forge and ComfyUI keep them, or anywhere under
``models/insightface`` and ``models/annotators``) give the largest face's identity; ``_plus`` also encodes the
picture with CLIP ViT-H.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webui.domain.controlnet import MODEL_NONE

ANNOTATORS_BASE_URL = "https://huggingface.co/lllyasviel/Annotators/resolve/main"
RESOLUTION_LABEL = "Preprocessor Resolution"
DEFAULT_RESOLUTION = 512


# The inpaint modules pass the picture through; the unit's mask (or img2img's inpaint mask) marks the pixels
# the ControlNet sees as -1 ("to be painted"). ``inpaint_only`` also keeps everything outside the mask: in
# txt2img the job then runs as an inpainting of the unit's picture.
# ``inpaint_only+lama`` is ``inpaint_only`` whose picture LaMa (``ControlNetLama.pth``) fills in the mask
# first, so the repaint starts from a plausible fill rather than the old content.
INPAINT_ONLY = "inpaint_only"
LAMA_MODULE = "inpaint_only+lama"
LAMA_FILE = "ControlNetLama.pth"
INPAINT_ONLY_MODULES = frozenset({INPAINT_ONLY, LAMA_MODULE})
INPAINT_MODULES = frozenset({"inpaint_global_harmonious", *INPAINT_ONLY_MODULES})

# The IP-Adapter modules pass the picture through too: the unit's IP-Adapter model encodes it with the CLIP
# image encoder the module names. The files each encoder is looked for under, first found wins (the
# extension's name, then the published / ComfyUI names), in models/clip_vision and models/annotators.
CLIP_H_FILES = (
    "clip_h.pth",
    "clip_h.safetensors",
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    "image_encoder",
)
CLIP_G_FILES = (
    "clip_g.pth",
    "clip_g.safetensors",
    "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
    "image_encoder_sdxl",
)
FACE_ID = "ip-adapter_face_id"
FACE_ID_PLUS = "ip-adapter_face_id_plus"
FACE_FILES = ("det_10g.onnx", "w600k_r50.onnx")  # InsightFace buffalo_l: SCRFD-10G detector, ArcFace R50
FACE_ID_MODULES = frozenset({FACE_ID, FACE_ID_PLUS})
IP_ADAPTER_MODULES: dict[str, tuple[str, ...]] = {
    "ip-adapter_clip_sd15": CLIP_H_FILES,
    "ip-adapter_clip_sdxl": CLIP_G_FILES,
    "ip-adapter_clip_sdxl_plus_vith": CLIP_H_FILES,
    FACE_ID: (),  # no CLIP encoder: the face embedding alone
    FACE_ID_PLUS: CLIP_H_FILES,
}


class UnknownPreprocessorError(ValueError):
    """A preprocessor (module) name that is neither a module name, a label nor a legacy alias."""


@dataclass(frozen=True)
class Slider:
    """One slider of a preprocessor, as the extension's ``module_detail`` describes it."""

    name: str  # the label the UI shows
    value: float  # the default
    min: float
    max: float
    step: float

    def accepts(self, value: float) -> bool:
        """Whether ``value`` is an explicit in-range setting (``-1``, NaN or out of range means default)."""
        return value == value and self.min <= value <= self.max and value != -1

    def pick(self, value: float) -> float:
        """``value`` when the slider accepts it, else the slider's default."""
        return value if self.accepts(value) else self.value

    def to_api(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


@dataclass(frozen=True)
class PreprocessorInfo:
    """One preprocessor: its A1111 names, sliders, control type and the annotator files it loads."""

    name: str  # the module name requests use (``depth_midas``)
    label: str  # what the extension's dropdown shows (usually ``name``)
    model_free: bool  # the extension's meaning: usable without a ControlNet model
    sliders: tuple[Slider | None, ...]  # slots: processor_res, threshold_a, threshold_b
    control_type: str  # the control-type tag the module mainly belongs to
    weight_files: tuple[str, ...]  # annotator files the module loads (URL: ANNOTATOR_URLS, else lllyasviel's)
    aliases: tuple[str, ...] = ()  # older A1111 names that mean this module
    weight_folder: str | None = None  # a transformers-format model folder under models/annotators it loads

    @property
    def needs_weights(self) -> bool:
        return bool(self.weight_files) or self.weight_folder is not None

    @property
    def resolution_slider(self) -> Slider | None:
        return self._slot(0)

    @property
    def threshold_a_slider(self) -> Slider | None:
        return self._slot(1)

    @property
    def threshold_b_slider(self) -> Slider | None:
        return self._slot(2)

    def _slot(self, index: int) -> Slider | None:
        return self.sliders[index] if index < len(self.sliders) else None

    def module_detail(self) -> dict[str, Any]:
        """``{"model_free": ..., "sliders": [...]}``: one entry of ``/controlnet/module_list``'s detail."""
        return {
            "model_free": self.model_free,
            "sliders": [None if slider is None else slider.to_api() for slider in self.sliders],
        }


@dataclass(frozen=True)
class ControlType:
    """One entry of the extension's control-type filter (``/controlnet/control_types``)."""

    tag: str  # "Canny", "Depth", "Scribble/Sketch" ...
    modules: tuple[str, ...]  # module names offered, in the dropdown's order ("none" first)
    default_option: str  # module name selected when the tag is picked
    model_filter: tuple[str, ...]  # lowercase keywords; a model matches when its name contains one


def _resolution(value: int = DEFAULT_RESOLUTION) -> Slider:
    return Slider(RESOLUTION_LABEL, value, 64, 2048, 8)


def _module(
    name: str,
    control_type: str,
    *,
    files: tuple[str, ...] = (),
    thresholds: tuple[Slider, ...] = (),
    resolution: bool = True,
    label: str | None = None,
    aliases: tuple[str, ...] = (),
    folder: str | None = None,
) -> PreprocessorInfo:
    sliders: tuple[Slider | None, ...] = ((_resolution(),) if resolution else (None,)) + thresholds
    if sliders == (None,):
        sliders = ()
    return PreprocessorInfo(
        name=name,
        label=label or name,
        model_free=False,
        sliders=sliders,
        control_type=control_type,
        weight_files=files,
        aliases=aliases,
        weight_folder=folder,
    )


OPENPOSE_BODY = "body_pose_model.pth"
OPENPOSE_HAND = "hand_pose_model.pth"
OPENPOSE_FACE = "facenet.pth"
HED_FILE = "ControlNetHED.pth"
PIDINET_FILE = "table5_pidinet.pth"
LINEART_FILE = "sk_model.pth"
LINEART_COARSE_FILE = "sk_model2.pth"
LINEART_ANIME_FILE = "netG.pth"
MLSD_FILE = "mlsd_large_512_fp32.pth"
NORMAL_BAE_FILE = "scannet.pt"
MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"
ZOE_FILE = "ZoeD_M12_N.pt"
DEPTH_ANYTHING_FILE = "depth_anything_vitl14.pth"  # the extension's defaults: ViT-L
DEPTH_ANYTHING_V2_FILE = "depth_anything_v2_vitl.safetensors"

# The Depth Anything files each module loads, first found wins: the extension's default, then the other
# published sizes and formats (the same keys), then transformers-format folders (config.json + weights).
DEPTH_ANYTHING_FILES: dict[str, tuple[str, ...]] = {
    "depth_anything": (
        DEPTH_ANYTHING_FILE,
        "depth_anything_vitl14.safetensors",
        "depth_anything_vitb14.pth",
        "depth_anything_vitb14.safetensors",
        "depth_anything_vits14.pth",
        "depth_anything_vits14.safetensors",
    ),
    "depth_anything_v2": (
        DEPTH_ANYTHING_V2_FILE,
        "depth_anything_v2_vitl.pth",
        "depth_anything_v2_vitb.safetensors",
        "depth_anything_v2_vitb.pth",
        "depth_anything_v2_vits.safetensors",
        "depth_anything_v2_vits.pth",
    ),
}
DEPTH_ANYTHING_FOLDERS: dict[str, tuple[str, ...]] = {
    "depth_anything": ("depth-anything-large-hf", "depth-anything-base-hf", "depth-anything-small-hf"),
    "depth_anything_v2": (
        "Depth-Anything-V2-Large-hf",
        "Depth-Anything-V2-Base-hf",
        "Depth-Anything-V2-Small-hf",
    ),
}
_DEPTH_ANYTHING_V1_URL = "https://huggingface.co/spaces/LiheYoung/Depth-Anything/resolve/main/checkpoints"
_DEPTH_ANYTHING_V2_URL = "https://huggingface.co/MackinationsAi/Depth-Anything-V2_Safetensors/resolve/main"
_DEPTH_ANYTHING_V2_REPOS = "https://huggingface.co/depth-anything/Depth-Anything-V2"
# DWPose's two networks, each first found wins: the extension's ONNX files, then the TorchScript exports.
DW_DETECTOR_FILE = "yolox_l.onnx"
DW_POSE_FILE = "dw-ll_ucoco_384.onnx"
DWPOSE_FILES: dict[str, tuple[str, ...]] = {
    "detector": (DW_DETECTOR_FILE, "yolox_l.torchscript.pt"),
    "pose": (DW_POSE_FILE, "dw-ll_ucoco_384_bs5.torchscript.pt"),
}
DW_OPENPOSE_MODULES = (
    "dw_openpose_full", "dw_openpose", "dw_openpose_hand", "dw_openpose_face", "dw_openpose_faceonly",
)  # fmt: skip
_DWPOSE_URL = "https://huggingface.co/yzd-v/DWPose/resolve/main"
# Where the annotator files that are not under lllyasviel/Annotators are published (the extension's sources
# for its defaults: the Depth Anything space for v1, MackinationsAi's safetensors for v2).
ANNOTATOR_URLS: dict[str, str] = {
    DW_DETECTOR_FILE: f"{_DWPOSE_URL}/{DW_DETECTOR_FILE}",
    DW_POSE_FILE: f"{_DWPOSE_URL}/{DW_POSE_FILE}",
    "depth_anything_vitl14.pth": f"{_DEPTH_ANYTHING_V1_URL}/depth_anything_vitl14.pth",
    "depth_anything_vitb14.pth": f"{_DEPTH_ANYTHING_V1_URL}/depth_anything_vitb14.pth",
    "depth_anything_vits14.pth": f"{_DEPTH_ANYTHING_V1_URL}/depth_anything_vits14.pth",
    "depth_anything_v2_vitl.safetensors": f"{_DEPTH_ANYTHING_V2_URL}/depth_anything_v2_vitl.safetensors",
    "depth_anything_v2_vitb.safetensors": f"{_DEPTH_ANYTHING_V2_URL}/depth_anything_v2_vitb.safetensors",
    "depth_anything_v2_vits.safetensors": f"{_DEPTH_ANYTHING_V2_URL}/depth_anything_v2_vits.safetensors",
    "depth_anything_v2_vitl.pth": f"{_DEPTH_ANYTHING_V2_REPOS}-Large/resolve/main/depth_anything_v2_vitl.pth",
    "depth_anything_v2_vitb.pth": f"{_DEPTH_ANYTHING_V2_REPOS}-Base/resolve/main/depth_anything_v2_vitb.pth",
    "depth_anything_v2_vits.pth": f"{_DEPTH_ANYTHING_V2_REPOS}-Small/resolve/main/depth_anything_v2_vits.pth",
}
# transformers-format segmentation model folders (config.json + model.safetensors) under models/annotators
SEG_ADE20K_ONEFORMER_DIR = "oneformer_ade20k"
SEG_COCO_ONEFORMER_DIR = "oneformer_coco"
SEG_ADE20K_UPERNET_DIR = "upernet_ade20k"
SEG_ADE20K_ONEFORMER_FILE = "250_16_swin_l_oneformer_ade20k_160k.pth"  # the extension's OneFormer files
SEG_COCO_ONEFORMER_FILE = "150_16_swin_l_oneformer_coco_100ep.pth"

INVERT_LABEL = "invert (from white bg & black line)"
LINEART_STANDARD_LABEL = "lineart_standard (from white bg & black line)"

PREPROCESSORS: tuple[PreprocessorInfo, ...] = (
    _module("none", "All", resolution=False),
    _module("invert", "Lineart", resolution=False, label=INVERT_LABEL),
    _module(
        "canny",
        "Canny",
        thresholds=(
            Slider("Canny Low Threshold", 100, 1, 255, 1),
            Slider("Canny High Threshold", 200, 1, 255, 1),
        ),
    ),
    _module("depth_midas", "Depth", files=(MIDAS_FILE,), aliases=("depth",)),
    _module("depth_zoe", "Depth", files=(ZOE_FILE,)),
    _module("depth_anything", "Depth", files=(DEPTH_ANYTHING_FILE,)),
    _module("depth_anything_v2", "Depth", files=(DEPTH_ANYTHING_V2_FILE,)),
    _module("openpose", "OpenPose", files=(OPENPOSE_BODY,)),
    _module("openpose_hand", "OpenPose", files=(OPENPOSE_BODY, OPENPOSE_HAND)),
    _module("openpose_face", "OpenPose", files=(OPENPOSE_BODY, OPENPOSE_FACE)),
    _module("openpose_faceonly", "OpenPose", files=(OPENPOSE_BODY, OPENPOSE_FACE)),
    _module("openpose_full", "OpenPose", files=(OPENPOSE_BODY, OPENPOSE_HAND, OPENPOSE_FACE)),
    *(_module(name, "OpenPose", files=(DW_DETECTOR_FILE, DW_POSE_FILE)) for name in DW_OPENPOSE_MODULES),
    _module("lineart_realistic", "Lineart", files=(LINEART_FILE,), aliases=("lineart",)),
    _module("lineart_coarse", "Lineart", files=(LINEART_COARSE_FILE,)),
    _module("lineart_anime", "Lineart", files=(LINEART_ANIME_FILE,)),
    _module("lineart_standard", "Lineart", label=LINEART_STANDARD_LABEL),
    _module("softedge_hed", "SoftEdge", files=(HED_FILE,), aliases=("hed",)),
    _module("softedge_hedsafe", "SoftEdge", files=(HED_FILE,), aliases=("hed_safe",)),
    _module("softedge_pidinet", "SoftEdge", files=(PIDINET_FILE,), aliases=("pidinet",)),
    _module("softedge_pidisafe", "SoftEdge", files=(PIDINET_FILE,), aliases=("pidinet_safe",)),
    _module("scribble_hed", "Scribble/Sketch", files=(HED_FILE,), aliases=("fake_scribble",)),
    _module("scribble_pidinet", "Scribble/Sketch", files=(PIDINET_FILE,), aliases=("pidinet_scribble",)),
    _module("scribble_xdog", "Scribble/Sketch", thresholds=(Slider("XDoG Threshold", 32, 1, 64, 1),)),
    _module(
        "mlsd",
        "MLSD",
        files=(MLSD_FILE,),
        thresholds=(
            Slider("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
            Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01),
        ),
    ),
    _module("normal_bae", "NormalMap", files=(NORMAL_BAE_FILE,)),
    _module(
        "seg_ofade20k",
        "Segmentation",
        files=(SEG_ADE20K_ONEFORMER_FILE,),
        folder=SEG_ADE20K_ONEFORMER_DIR,
        aliases=("oneformer_ade20k",),
    ),
    _module(
        "seg_ofcoco",
        "Segmentation",
        files=(SEG_COCO_ONEFORMER_FILE,),
        folder=SEG_COCO_ONEFORMER_DIR,
        aliases=("oneformer_coco",),
    ),
    _module("seg_ufade20k", "Segmentation", folder=SEG_ADE20K_UPERNET_DIR, aliases=("segmentation",)),
    _module("shuffle", "Shuffle"),
    _module("inpaint_global_harmonious", "Inpaint", resolution=False, aliases=("inpaint",)),
    _module("inpaint_only", "Inpaint", resolution=False),
    _module(LAMA_MODULE, "Inpaint", resolution=False, files=(LAMA_FILE,)),
    _module("ip-adapter_clip_sd15", "IP-Adapter", resolution=False, aliases=("ip-adapter_clip_h",)),
    _module("ip-adapter_clip_sdxl", "IP-Adapter", resolution=False, aliases=("ip-adapter_clip_g",)),
    _module("ip-adapter_clip_sdxl_plus_vith", "IP-Adapter", resolution=False),
    _module(FACE_ID, "IP-Adapter", resolution=False),
    _module(FACE_ID_PLUS, "IP-Adapter", resolution=False),
    _module(
        "tile_resample",
        "Tile/Blur",
        resolution=False,
        thresholds=(Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01),),
    ),
)

_BY_NAME: dict[str, PreprocessorInfo] = {}
for _info in PREPROCESSORS:
    for _key in (_info.name, _info.label, *_info.aliases):
        _BY_NAME.setdefault(_key.lower(), _info)


def module_names() -> list[str]:
    """Every module name, in the table's order."""
    return [info.name for info in PREPROCESSORS]


def resolve_module(name: str) -> PreprocessorInfo:
    """The preprocessor called ``name`` (a module name, label or legacy alias; case-insensitive)."""
    info = _BY_NAME.get(name.strip().lower())
    if info is None:
        raise UnknownPreprocessorError(
            f"Unknown ControlNet preprocessor {name!r}. Valid names: {', '.join(module_names())}."
        )
    return info


def dropdown_order() -> list[PreprocessorInfo]:
    """The extension's dropdown order: ``none``, ``invert``, then the rest sorted by label."""
    head = [resolve_module("none"), resolve_module("invert")]
    rest = sorted((info for info in PREPROCESSORS if info not in head), key=lambda info: info.label)
    return head + rest


_SHARED = ("none", "invert")  # listed by several tags, placed by the rules below


def _tag_modules(tag: str, *, with_invert: bool = False) -> tuple[str, ...]:
    members = [
        info.name for info in dropdown_order() if info.control_type == tag and info.name not in _SHARED
    ]
    return ("none", *members, *(("invert",) if with_invert else ()))


# As the extension: a tag lists "none", its own modules in dropdown order, and for the line-drawing tags
# "invert" at the end (it turns a black-on-white drawing into the white-on-black map those models want).
CONTROL_TYPES: tuple[ControlType, ...] = (
    ControlType("All", tuple(info.name for info in dropdown_order()), "none", ()),
    ControlType("Canny", _tag_modules("Canny", with_invert=True), "canny", ("canny",)),
    ControlType("Depth", _tag_modules("Depth"), "depth_midas", ("depth",)),
    ControlType("NormalMap", _tag_modules("NormalMap"), "normal_bae", ("normalmap", "normal")),
    ControlType("OpenPose", _tag_modules("OpenPose"), "openpose_full", ("openpose",)),
    ControlType("MLSD", _tag_modules("MLSD", with_invert=True), "mlsd", ("mlsd",)),
    ControlType("Lineart", _tag_modules("Lineart", with_invert=True), "lineart_standard", ("lineart",)),
    ControlType("SoftEdge", _tag_modules("SoftEdge"), "softedge_pidinet", ("softedge",)),
    ControlType(
        "Scribble/Sketch",
        _tag_modules("Scribble/Sketch", with_invert=True),
        "scribble_pidinet",
        ("scribble/sketch", "scribble", "sketch"),
    ),
    ControlType("Segmentation", _tag_modules("Segmentation"), "seg_ofade20k", ("seg",)),
    ControlType("Shuffle", _tag_modules("Shuffle"), "shuffle", ("shuffle",)),
    ControlType("Tile/Blur", _tag_modules("Tile/Blur"), "tile_resample", ("tile/blur", "tile", "blur")),
    ControlType("Inpaint", _tag_modules("Inpaint"), "inpaint_only", ("inpaint",)),
    ControlType(
        "IP-Adapter", _tag_modules("IP-Adapter"), "ip-adapter_clip_sd15", ("ip-adapter", "ip_adapter")
    ),
)


def _default_model(models: list[str]) -> str:
    """The extension's pick: the first ControlNet 1.1 model (``11`` in its name), else the first model."""
    for model in models:
        if "11" in model.split("[")[0]:
            return model
    return models[0] if models else MODEL_NONE


def control_types(model_names: list[str]) -> dict[str, dict[str, Any]]:
    """``{tag: {"module_list", "model_list", "default_option", "default_model"}}`` for ``model_names``.

    ``model_names`` are ControlNet model titles (``control_v11p_sd15_canny [d14c016b]``); ``"None"`` in
    them is ignored, as ``model_list`` always starts with it. Modules are given by their labels, as the
    extension's dropdown shows them. The API wraps this in ``{"control_types": ...}``.
    """
    models = [name for name in model_names if name != MODEL_NONE]
    result: dict[str, dict[str, Any]] = {}
    for control in CONTROL_TYPES:
        if control.model_filter:
            matching = [m for m in models if any(word in m.lower() for word in control.model_filter)]
            default_model = _default_model(matching)
        else:
            matching, default_model = models, MODEL_NONE
        result[control.tag] = {
            "module_list": [resolve_module(name).label for name in control.modules],
            "model_list": [MODEL_NONE, *matching],
            "default_option": resolve_module(control.default_option).label,
            "default_model": default_model,
        }
    return result
