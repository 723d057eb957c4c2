"""The ControlNet preprocessor table: A1111 names and aliases, slider details, control types."""

from __future__ import annotations

import json

import pytest

from webui.domain.controlnet_modules import (
    ANNOTATOR_URLS,
    CONTROL_TYPES,
    DEPTH_ANYTHING_FILES,
    INVERT_LABEL,
    LINEART_STANDARD_LABEL,
    PREPROCESSORS,
    RESOLUTION_LABEL,
    Slider,
    UnknownPreprocessorError,
    control_types,
    module_names,
    resolve_module,
)

EXPECTED_MODULES = {
    "none", "invert", "canny", "depth_midas", "depth_zoe", "openpose", "openpose_hand", "openpose_face",
    "openpose_faceonly", "openpose_full", "lineart_realistic", "lineart_coarse", "lineart_anime",
    "lineart_standard", "softedge_hed", "softedge_hedsafe", "softedge_pidinet", "softedge_pidisafe",
    "scribble_hed", "scribble_pidinet", "scribble_xdog", "mlsd", "normal_bae", "shuffle", "tile_resample",
    "inpaint_global_harmonious", "inpaint_only", "inpaint_only+lama", "seg_ofade20k", "seg_ofcoco",
    "seg_ufade20k",
    "depth_anything", "depth_anything_v2", "dw_openpose_full", "dw_openpose", "dw_openpose_hand",
    "dw_openpose_face", "dw_openpose_faceonly",
    "ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith",
    "ip-adapter_face_id", "ip-adapter_face_id_plus",
}  # fmt: skip

MODELS = [
    "None",
    "control_sd15_canny [fef5e48e]",
    "control_v11p_sd15_canny [d14c016b]",
    "control_v11f1p_sd15_depth [cfd03158]",
    "control_v11p_sd15_openpose [cab727d4]",
    "control_v11p_sd15_lineart [43d4be0d]",
    "control_v11p_sd15s2_lineart_anime [3825e83e]",
    "control_v11p_sd15_softedge [a8575a2a]",
    "control_v11p_sd15_scribble [d4ba51ff]",
    "control_v11p_sd15_mlsd [aca30ff0]",
    "control_v11p_sd15_normalbae [316696f1]",
    "control_v11e_sd15_shuffle [526bfdae]",
    "control_v11f1e_sd15_tile [a371b31b]",
    "t2iadapter_sketch_sd15v2 [71b71e0e]",
]


def test_module_names_are_the_extensions_and_unique() -> None:
    assert set(module_names()) == EXPECTED_MODULES
    assert len(module_names()) == len(EXPECTED_MODULES)


def test_left_out_modules_are_unknown() -> None:
    for name in ("animal_openpose", "seg_anime_face", "mobile_sam", "t2ia_sketch_pidi"):
        with pytest.raises(UnknownPreprocessorError):
            resolve_module(name)


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("depth", "depth_midas"),
        ("hed", "softedge_hed"),
        ("hed_safe", "softedge_hedsafe"),
        ("pidinet", "softedge_pidinet"),
        ("pidinet_safe", "softedge_pidisafe"),
        ("pidinet_scribble", "scribble_pidinet"),
        ("fake_scribble", "scribble_hed"),
        ("inpaint", "inpaint_global_harmonious"),
        ("oneformer_ade20k", "seg_ofade20k"),
        ("oneformer_coco", "seg_ofcoco"),
        ("segmentation", "seg_ufade20k"),
        ("ip-adapter_clip_h", "ip-adapter_clip_sd15"),
        ("ip-adapter_clip_g", "ip-adapter_clip_sdxl"),
        ("lineart", "lineart_realistic"),
        (INVERT_LABEL, "invert"),
        (LINEART_STANDARD_LABEL, "lineart_standard"),
        ("CANNY", "canny"),
        ("  Depth_Midas ", "depth_midas"),
        ("OpenPose_Full", "openpose_full"),
    ],
)
def test_aliases_and_labels_resolve_case_insensitively(alias: str, name: str) -> None:
    assert resolve_module(alias).name == name


def test_unknown_module_error_lists_valid_names() -> None:
    with pytest.raises(UnknownPreprocessorError) as caught:
        resolve_module("depth_leres_plus_plus")
    message = str(caught.value)
    assert "depth_leres_plus_plus" in message
    for name in ("canny", "openpose_full", "tile_resample", "lineart_standard"):
        assert name in message
    assert isinstance(caught.value, ValueError)


def test_labels_only_differ_for_invert_and_lineart_standard() -> None:
    differing = {info.name: info.label for info in PREPROCESSORS if info.label != info.name}
    assert differing == {"invert": INVERT_LABEL, "lineart_standard": LINEART_STANDARD_LABEL}


def test_module_detail_shape_matches_the_extension() -> None:
    detail = resolve_module("canny").module_detail()
    assert detail == {
        "model_free": False,
        "sliders": [
            {"name": RESOLUTION_LABEL, "value": 512, "min": 64, "max": 2048, "step": 8},
            {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
            {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
        ],
    }
    json.dumps(detail)  # serialisable as is


def test_sliders_are_positional_with_null_for_a_missing_resolution() -> None:
    assert resolve_module("tile_resample").module_detail()["sliders"] == [
        None,
        {"name": "Down Sampling Rate", "value": 1.0, "min": 1.0, "max": 8.0, "step": 0.01},
    ]
    assert resolve_module("none").module_detail() == {"model_free": False, "sliders": []}
    assert resolve_module("invert").module_detail()["sliders"] == []
    mlsd = resolve_module("mlsd")
    assert [s.name for s in mlsd.sliders if s] == [
        RESOLUTION_LABEL,
        "MLSD Value Threshold",
        "MLSD Distance Threshold",
    ]
    assert resolve_module("scribble_xdog").threshold_a_slider == Slider("XDoG Threshold", 32, 1, 64, 1)


def test_every_module_with_a_resolution_lists_it_first_with_the_default() -> None:
    for info in PREPROCESSORS:
        first = info.resolution_slider
        if first is not None:
            assert first.name == RESOLUTION_LABEL and first.value == 512, info.name
        assert all(s is None or s.name != RESOLUTION_LABEL for s in info.sliders[1:]), info.name
        assert info.model_free is False  # the extension's meaning: needs a ControlNet model


def test_slider_pick_uses_the_default_for_minus_one_nan_and_out_of_range() -> None:
    slider = Slider("Canny Low Threshold", 100, 1, 255, 1)
    assert slider.pick(-1) == 100
    assert slider.pick(float("nan")) == 100
    assert slider.pick(0) == 100
    assert slider.pick(256) == 100
    assert slider.pick(1) == 1
    assert slider.pick(255) == 255


def test_weight_files_are_the_annotator_files_each_loader_reads() -> None:
    files = {info.name: info.weight_files for info in PREPROCESSORS}
    assert files["openpose"] == ("body_pose_model.pth",)
    assert files["openpose_hand"] == ("body_pose_model.pth", "hand_pose_model.pth")
    assert files["openpose_face"] == ("body_pose_model.pth", "facenet.pth")
    assert files["openpose_faceonly"] == ("body_pose_model.pth", "facenet.pth")
    assert set(files["openpose_full"]) == {"body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"}
    assert files["dw_openpose_full"] == ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")
    assert files["depth_midas"] == ("dpt_hybrid-midas-501f0c75.pt",)
    assert files["depth_zoe"] == ("ZoeD_M12_N.pt",)
    assert files["depth_anything"] == ("depth_anything_vitl14.pth",)
    assert files["depth_anything_v2"] == ("depth_anything_v2_vitl.safetensors",)
    assert files["lineart_realistic"] == ("sk_model.pth",)
    assert files["lineart_coarse"] == ("sk_model2.pth",)
    assert files["lineart_anime"] == ("netG.pth",)
    for name in ("softedge_hed", "softedge_hedsafe", "scribble_hed"):
        assert files[name] == ("ControlNetHED.pth",)
    for name in ("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet"):
        assert files[name] == ("table5_pidinet.pth",)
    assert files["mlsd"] == ("mlsd_large_512_fp32.pth",)
    assert files["normal_bae"] == ("scannet.pt",)
    assert files["seg_ofade20k"] == ("250_16_swin_l_oneformer_ade20k_160k.pth",)
    assert files["seg_ofcoco"] == ("150_16_swin_l_oneformer_coco_100ep.pth",)
    assert files["seg_ufade20k"] == ()  # its UniFormer file cannot be read: a model folder only
    folders = {info.name: info.weight_folder for info in PREPROCESSORS if info.weight_folder is not None}
    assert folders == {
        "seg_ofade20k": "oneformer_ade20k",
        "seg_ofcoco": "oneformer_coco",
        "seg_ufade20k": "upernet_ade20k",
    }
    cheap = {name for name, needed in files.items() if not needed and name not in folders}
    assert cheap == {
        "none",
        "invert",
        "canny",
        "lineart_standard",
        "scribble_xdog",
        "shuffle",
        "tile_resample",
        "inpaint_global_harmonious",
        "inpaint_only",
        "ip-adapter_clip_sd15",
        "ip-adapter_clip_sdxl",
        "ip-adapter_clip_sdxl_plus_vith",
        # the InsightFace files are found by the ControlNet service, not the annotator store
        "ip-adapter_face_id",
        "ip-adapter_face_id_plus",
    }
    assert all(resolve_module(name).needs_weights is (name not in cheap) for name in files)


def test_control_types_shape_and_tags() -> None:
    result = control_types(MODELS)
    assert list(result) == [
        "All", "Canny", "Depth", "NormalMap", "OpenPose", "MLSD", "Lineart", "SoftEdge", "Scribble/Sketch",
        "Segmentation", "Shuffle", "Tile/Blur", "Inpaint", "IP-Adapter",
    ]  # fmt: skip
    for tag, entry in result.items():
        assert set(entry) == {"module_list", "model_list", "default_option", "default_model"}, tag
        assert entry["model_list"][0] == "None", tag
        assert entry["model_list"].count("None") == 1, tag
        assert entry["module_list"][0] == "none", tag
        assert entry["default_option"] in entry["module_list"], tag
        assert entry["default_model"] in entry["model_list"], tag
    json.dumps(result)


def test_control_types_filter_models_and_pick_defaults_like_the_extension() -> None:
    result = control_types(MODELS)
    assert result["All"]["model_list"] == MODELS
    assert result["All"]["default_model"] == "None"
    assert result["All"]["module_list"][:2] == ["none", INVERT_LABEL]
    canny = result["Canny"]
    assert canny["module_list"] == ["none", "canny", INVERT_LABEL]
    assert canny["model_list"] == [
        "None",
        "control_sd15_canny [fef5e48e]",
        "control_v11p_sd15_canny [d14c016b]",
    ]
    assert canny["default_model"] == "control_v11p_sd15_canny [d14c016b]"  # ControlNet 1.1 preferred
    assert result["Depth"]["module_list"] == [
        "none",
        "depth_anything",
        "depth_anything_v2",
        "depth_midas",
        "depth_zoe",
    ]
    assert result["Depth"]["default_option"] == "depth_midas"
    assert result["OpenPose"]["default_option"] == "openpose_full"
    assert result["OpenPose"]["model_list"] == ["None", "control_v11p_sd15_openpose [cab727d4]"]
    lineart = result["Lineart"]
    assert lineart["default_option"] == LINEART_STANDARD_LABEL
    assert lineart["module_list"][-1] == INVERT_LABEL
    assert lineart["model_list"][1:] == [
        "control_v11p_sd15_lineart [43d4be0d]",
        "control_v11p_sd15s2_lineart_anime [3825e83e]",
    ]
    assert result["NormalMap"]["model_list"] == ["None", "control_v11p_sd15_normalbae [316696f1]"]
    sketch = result["Scribble/Sketch"]
    assert sketch["module_list"] == [
        "none",
        "scribble_hed",
        "scribble_pidinet",
        "scribble_xdog",
        INVERT_LABEL,
    ]
    assert sketch["model_list"][1:] == [
        "control_v11p_sd15_scribble [d4ba51ff]",
        "t2iadapter_sketch_sd15v2 [71b71e0e]",
    ]
    assert sketch["default_option"] == "scribble_pidinet"
    assert result["Tile/Blur"]["model_list"] == ["None", "control_v11f1e_sd15_tile [a371b31b]"]
    assert result["SoftEdge"]["default_option"] == "softedge_pidinet"


def test_control_types_without_models() -> None:
    result = control_types([])
    for entry in result.values():
        assert entry["model_list"] == ["None"]
        assert entry["default_model"] == "None"


def test_control_type_modules_exist_and_cover_the_table() -> None:
    listed: set[str] = set()
    for control in CONTROL_TYPES:
        for name in control.modules:
            assert resolve_module(name).name == name
        assert control.default_option in control.modules
        assert all(word == word.lower() for word in control.model_filter)
        listed |= set(control.modules)
    assert listed == EXPECTED_MODULES
    all_entry = next(c for c in CONTROL_TYPES if c.tag == "All")
    assert set(all_entry.modules) == EXPECTED_MODULES


def test_depth_anything_modules_are_depth_preprocessors_with_a_resolution() -> None:
    for name in ("depth_anything", "depth_anything_v2"):
        info = resolve_module(name)
        assert (info.name, info.label, info.control_type) == (name, name, "Depth")
        assert info.module_detail() == {
            "model_free": False,
            "sliders": [{"name": RESOLUTION_LABEL, "value": 512, "min": 64, "max": 2048, "step": 8}],
        }
        assert name in module_names()
        assert name in next(c for c in CONTROL_TYPES if c.tag == "Depth").modules
    # v1's file is the Depth Anything space's, v2's MackinationsAi's safetensors (the extension's sources)
    assert ANNOTATOR_URLS["depth_anything_vitl14.pth"] == (
        "https://huggingface.co/spaces/LiheYoung/Depth-Anything/resolve/main/checkpoints/depth_anything_vitl14.pth"
    )
    assert ANNOTATOR_URLS["depth_anything_v2_vitl.safetensors"] == (
        "https://huggingface.co/MackinationsAi/Depth-Anything-V2_Safetensors/resolve/main/"
        "depth_anything_v2_vitl.safetensors"
    )
    for module, files in DEPTH_ANYTHING_FILES.items():
        assert files[0] == resolve_module(module).weight_files[0]  # the default is looked for first
        assert all(("_v2_" in name) is (module == "depth_anything_v2") for name in files)


def test_segmentation_control_type_lists_the_seg_modules_and_seg_models() -> None:
    models = [
        "control_v11p_sd15_seg [e1f51eb9]",
        "control_sd15_seg [fef5e48e]",
        "control_v11p_sd15_canny [d14c016b]",
    ]
    segmentation = control_types(models)["Segmentation"]
    assert segmentation == {
        "module_list": ["none", "seg_ofade20k", "seg_ofcoco", "seg_ufade20k"],
        "model_list": ["None", "control_v11p_sd15_seg [e1f51eb9]", "control_sd15_seg [fef5e48e]"],
        "default_option": "seg_ofade20k",
        "default_model": "control_v11p_sd15_seg [e1f51eb9]",
    }
    for name in ("seg_ofade20k", "seg_ofcoco", "seg_ufade20k"):
        info = resolve_module(name)
        assert (info.label, info.control_type, info.needs_weights) == (name, "Segmentation", True)
        assert info.module_detail() == {
            "model_free": False,
            "sliders": [{"name": RESOLUTION_LABEL, "value": 512, "min": 64, "max": 2048, "step": 8}],
        }
