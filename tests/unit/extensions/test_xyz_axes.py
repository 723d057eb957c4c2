"""X/Y/Z plot axes: A1111's value formats, ranges, axis lookup and the checks made before any image."""

from __future__ import annotations

import pytest

from tests.bundled_extensions import load_module
from webui.extensions.api import Img2ImgRequest, Txt2ImgRequest

from .fakes import FakeEasel

axes = load_module("xyz-plot", "axes")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1-5", [1, 2, 3, 4, 5]),
        ("1-10 (+2)", [1, 3, 5, 7, 9]),
        ("10-1 (-3)", [10, 7, 4, 1]),
        ("1-10 [5]", [1, 3, 5, 7, 10]),
        ("1-3, 7, 9-10", [1, 2, 3, 7, 9, 10]),
        (" 5 - 7 ", [5, 6, 7]),
        ("-1, 42", [-1, 42]),
        ("-5--3", [-5, -4, -3]),
        ("8", [8]),
    ],
)
def test_integer_values_and_ranges(text: str, expected: list[int]) -> None:
    values = axes.parse_numbers(axes.split_values(text), integer=True)
    assert values == expected
    assert all(type(v) is int for v in values)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-1 (+0.25)", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("0-1 (+0.3)", [0.0, 0.3, 0.6, 0.9]),  # never past the end
        ("1-2 [3]", [1.0, 1.5, 2.0]),
        ("7, 7.5, 8.25", [7.0, 7.5, 8.25]),
        ("5-7", [5.0, 6.0, 7.0]),
        ("1.5-0.5 (-0.5)", [1.5, 1.0, 0.5]),
    ],
)
def test_float_values_and_ranges(text: str, expected: list[float]) -> None:
    assert axes.parse_numbers(axes.split_values(text), integer=False) == expected


@pytest.mark.parametrize(
    ("text", "integer", "message"),
    [
        ("abc", True, "'abc' is not a whole number"),
        ("7.5", True, "not a whole number"),
        ("1-5 (+0)", True, "must not be 0"),
        ("1-5 (-1)", True, "has no values"),
        ("1-2 (+0.5)", True, "whole ends and step"),
        ("1-10 [0]", True, "at least 1"),
        ("x", False, "'x' is not a number"),
        ("0-1000000 (+1)", False, "use a larger step"),
    ],
)
def test_bad_values_are_refused_with_their_text(text: str, integer: bool, message: str) -> None:
    with pytest.raises(axes.AxisError, match=message):
        axes.parse_numbers(axes.split_values(text), integer=integer)


def test_comma_lists_with_csv_quotes() -> None:
    assert axes.split_values('cat, "dog, wolf", bird') == ["cat", "dog, wolf", "bird"]
    assert axes.split_values("a,b,,c, ") == ["a", "b", "c"]
    assert axes.split_values("") == []


def test_a1111_axis_indices_name_the_same_axes_per_tab() -> None:
    # A1111 v1.10's txt2img list: 0 Nothing, 1 Seed, 4 Steps, 6 CFG Scale, 7 Prompt S/R, 9 Sampler,
    # 11 Checkpoint name
    assert axes.find_axis("txt2img", 1).label == "Seed"
    assert axes.find_axis("txt2img", 4).label == "Steps"
    assert axes.find_axis("txt2img", 6).label == "CFG Scale"
    assert axes.find_axis("txt2img", 7).label == "Prompt S/R"
    assert axes.find_axis("txt2img", 9).label == "Sampler"
    assert axes.find_axis("txt2img", 11).label == "Checkpoint name"
    # img2img has Image CFG Scale at 6 and no hires axes
    assert axes.find_axis("img2img", 5).label == "CFG Scale"
    assert axes.find_axis("img2img", 10).label == "Checkpoint name"
    assert axes.find_axis("img2img", "denoising").label == "Denoising"
    assert axes.find_axis("txt2img", "4").label == "Steps"


def test_axis_lookup_errors() -> None:
    with pytest.raises(axes.AxisError, match="unknown axis type 'Colour'"):
        axes.find_axis("txt2img", "Colour")
    with pytest.raises(axes.AxisError, match="out of range"):
        axes.find_axis("txt2img", 999)
    with pytest.raises(axes.AxisError, match="'Sigma Churn' axis is A1111's"):
        axes.find_axis("txt2img", "Sigma Churn")
    with pytest.raises(axes.AxisError, match="unknown axis type"):
        axes.find_axis("img2img", "Hires steps")


def test_shown_axes_are_the_supported_ones_of_the_tab() -> None:
    labels = [axis.label for axis in axes.shown_axes("txt2img")]
    for label in (
        "Nothing",
        "Seed",
        "Var. seed",
        "Var. strength",
        "Steps",
        "CFG Scale",
        "Sampler",
        "Schedule type",
        "Checkpoint name",
        "VAE",
        "Prompt S/R",
        "Clip skip",
        "Denoising",
        "Hires upscaler",
        "Hires steps",
        "[ControlNet] Weight",
        "Size",
    ):
        assert label in labels
    assert "Sigma Churn" not in labels and "Image CFG Scale" not in labels
    assert "Hires steps" not in [axis.label for axis in axes.shown_axes("img2img")]


def _check(label: str, values: list, request=None, tab="txt2img"):
    axis = axes.find_axis(tab, label)
    request = request or Txt2ImgRequest(prompt="a cat, <lora:x:0.5>", negative_prompt="blurry")
    return axis.check(request, axis.parse(values), FakeEasel())


def test_checks_canonicalise_names_and_refuse_unknown_ones() -> None:
    assert _check("Sampler", ["euler a", "DDIM"]) == ["Euler a", "DDIM"]
    with pytest.raises(axes.AxisError, match="unknown sampler 'Foo'; known: Euler, Euler a"):
        _check("Sampler", ["Foo"])
    assert _check("Schedule type", ["karras"]) == ["Karras"]
    assert _check("Checkpoint name", ["alpha", "beta.safetensors", "bbbbbbbbbb"]) == [
        "alpha.safetensors [aaaaaaaaaa]",
        "sub/beta.safetensors [bbbbbbbbbb]",
        "sub/beta.safetensors [bbbbbbbbbb]",
    ]
    with pytest.raises(axes.AxisError, match="unknown checkpoint 'gamma'"):
        _check("Checkpoint name", ["gamma"])
    assert _check("VAE", ["automatic", "None", "kl-f8.safetensors"]) == [
        "Automatic",
        "None",
        "kl-f8.safetensors",
    ]
    assert _check("Size", ["512x768", " 64 x 64 "]) == ["512x768", "64x64"]
    with pytest.raises(axes.AxisError, match="WIDTHxHEIGHT"):
        _check("Size", ["big"])
    with pytest.raises(axes.AxisError, match="RNG source 'NV'"):
        _check("RNG source", ["NV"])


def test_prompt_search_must_be_in_the_prompt() -> None:
    assert _check("Prompt S/R", ["0.5", "0.8"]) == ["0.5", "0.8"]
    assert _check("Prompt S/R", ["blurry", "sharp"]) == ["blurry", "sharp"]
    with pytest.raises(axes.AxisError, match="did not find 'dog'"):
        _check("Prompt S/R", ["dog", "cat"])


def test_hires_axes_need_hires_fix_in_txt2img() -> None:
    with pytest.raises(axes.AxisError, match=r"turn on Hires\. fix"):
        _check("Hires steps", ["5"])
    with pytest.raises(axes.AxisError, match=r"Hires\. fix"):
        _check("Denoising", ["0.5"])
    hires = Txt2ImgRequest(enable_hr=True)
    assert _check("Hires upscaler", ["lanczos", "latent (bicubic)"], hires) == ["Lanczos", "Latent (bicubic)"]
    image = Img2ImgRequest(init_images=["x"])
    assert _check("Denoising", ["0.3-0.5 (+0.1)"], image, "img2img") == [0.3, 0.4, 0.5]


def test_controlnet_weight_needs_an_enabled_first_unit() -> None:
    with pytest.raises(axes.AxisError, match="enable it first"):
        _check("[ControlNet] Weight", ["0.5"])
    request = Txt2ImgRequest(controlnet_units=[{"enabled": True, "module": "none", "model": "None"}])
    assert _check("[ControlNet] Weight", ["0.5", "1"], request) == [0.5, 1.0]
    axis = axes.find_axis("txt2img", "[ControlNet] Weight")
    update = axis.apply(request, 0.5, [0.5, 1.0])
    assert update["controlnet_units"][0].weight == 0.5
    assert request.controlnet_units[0].weight == 1.0


def test_applies() -> None:
    request = Txt2ImgRequest(prompt="a cat, <lora:x:0.5>", negative_prompt="0.5 blurry", styles=["s1"])
    sr = axes.find_axis("txt2img", "Prompt S/R")
    assert sr.apply(request, "0.8", ["0.5", "0.8"]) == {
        "prompt": "a cat, <lora:x:0.8>",
        "negative_prompt": "0.8 blurry",
    }
    order = axes.find_axis("txt2img", "Prompt order")
    request = Txt2ImgRequest(prompt="one, two, three")
    assert order.apply(request, ("three", "one", "two"), []) == {"prompt": "three, one, two"}
    assert axes.find_axis("txt2img", "Size").apply(request, "128x64", []) == {"width": 128, "height": 64}
    styles = axes.find_axis("txt2img", "Styles").apply(Txt2ImgRequest(styles=["s1"]), "a, b", [])
    assert styles == {"styles": ["s1", "a", "b"]}
    face = axes.find_axis("txt2img", "Face restore")
    assert face.apply(request, "true", []) == {"restore_faces": True}
    assert face.apply(request, "CodeFormer", [])["override_settings"] == {
        "face_restoration_model": "CodeFormer"
    }


def test_labels() -> None:
    assert axes.find_axis("txt2img", "Steps").label_for(20) == "Steps: 20"
    assert axes.find_axis("txt2img", "CFG Scale").label_for(7.0) == "CFG Scale: 7"
    assert axes.find_axis("txt2img", "CFG Scale").label_for(0.30000000000000004) == "CFG Scale: 0.3"
    assert axes.find_axis("txt2img", "Sampler").label_for("Euler a") == "Euler a"
    assert axes.find_axis("txt2img", "Checkpoint name").label_for("sub/beta.safetensors [bb]") == "beta"
    assert axes.find_axis("txt2img", "Prompt order").label_for(("a", "b")) == "a, b"
    assert axes.find_axis("txt2img", "Nothing").label_for(None) == ""


def test_refiner_axes() -> None:
    assert _check("Refiner checkpoint", ["None", "beta"]) == [None, "sub/beta.safetensors [bbbbbbbbbb]"]
    with pytest.raises(axes.AxisError, match="unknown checkpoint 'gamma'"):
        _check("Refiner checkpoint", ["gamma"])
    assert _check("Refiner switch at", ["0.5-1 (+0.25)"]) == [0.5, 0.75, 1.0]
    with pytest.raises(axes.AxisError, match=r"Refiner switch at 1\.5: use a fraction above 0"):
        _check("Refiner switch at", ["0.8", "1.5"])
    request = Txt2ImgRequest()
    checkpoint = axes.find_axis("txt2img", "Refiner checkpoint")
    assert checkpoint.apply(request, "sub/beta.safetensors [bb]", []) == {
        "refiner_checkpoint": "sub/beta.safetensors [bb]"
    }
    assert checkpoint.label_for("sub/beta.safetensors [bb]") == "Refiner checkpoint: beta"
    assert checkpoint.label_for(None) == "Refiner checkpoint: None"
    assert Txt2ImgRequest(**checkpoint.apply(request, None, [])).refiner_checkpoint is None
    assert axes.find_axis("img2img", "Refiner switch at").apply(request, 0.6, []) == {
        "refiner_switch_at": 0.6
    }


def test_fp8_mode_axis_sets_the_option_for_its_images() -> None:
    assert _check("FP8 mode", ["disable", "Enable for SDXL"]) == ["Disable", "Enable for SDXL"]
    with pytest.raises(axes.AxisError, match="unknown FP8 mode 'half'"):
        _check("FP8 mode", ["half"])
    request = Txt2ImgRequest(override_settings={"jpeg_quality": 80})
    update = axes.find_axis("txt2img", "FP8 mode").apply(request, "Enable", [])
    assert update == {"override_settings": {"jpeg_quality": 80, "fp8_storage": "Enable"}}
    assert request.override_settings == {"jpeg_quality": 80}
