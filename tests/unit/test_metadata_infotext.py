"""Infotext writing and parsing, checked against real and spec-derived A1111 infotexts."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webui.domain.generation import RngSource, Txt2ImgRequest
from webui.metadata.infotext import (
    PARSE_DEFAULTS,
    build_infotext,
    generation_params,
    parse_infotext,
    quote,
    request_fields_from_infotext,
    split_legacy_sampler,
)

DUCK = (
    "photo of a duck\n"
    "Negative prompt: monochrome\n"
    "Steps: 15, Sampler: UniPC, CFG scale: 5, Seed: 235284042, Size: 512x400, Model hash: c0d1994c73, "
    "Model: realistic_realisticVisionV20_v20"
)

A1111_DOCSTRING = (
    "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, "
    "by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
    "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, "
    "poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
)

CONTROLNET_0 = (
    "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Crop and Resize, "
    "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
    "Pixel Perfect: False, Control Mode: Balanced"
)

# Spec example D: what A1111 v1.10 writes for an API txt2img call with hires fix, a LoRA and ControlNet.
EXAMPLE_D = (
    "masterpiece, 1girl <lora:styleA:0.8>\n"
    "Negative prompt: lowres, bad hands\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, Clip skip: 2, "
    f'ControlNet 0: "{CONTROLNET_0}", Hires upscale: 2.0, Hires steps: 10, Hires upscaler: Latent, '
    'Lora hashes: "styleA: afac10eceab0", Version: v1.10.1'
)


# --------------------------------------------------------------------------------------------- quote / build


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Euler a", "Euler a"),
        (7.0, "7.0"),
        (20, "20"),
        ("a, b", '"a, b"'),
        ("a: b", '"a: b"'),
        ("line\nbreak", '"line\\nbreak"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        ("日本, 語", '"日本, 語"'),
        ('plain "quotes"', 'plain "quotes"'),
    ],
)
def test_quote(value: object, expected: str) -> None:
    assert quote(value) == expected


@given(st.text())
def test_quote_property(text: str) -> None:
    quoted = quote(text)
    if any(ch in text for ch in ",:\n"):
        assert quoted.startswith('"') and quoted.endswith('"')
        assert json.loads(quoted) == text
        assert "\n" not in quoted
    else:
        assert quoted == text


def test_build_infotext_layout() -> None:
    params = {"Steps": 20, "Sampler": "Euler a", "Hash": None, "Tiling": "Tiling", "Note": "a, b"}
    text = build_infotext("a cat", "blurry", params)
    assert text == 'a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Tiling, Note: "a, b"'


def test_build_infotext_without_negative_or_prompt() -> None:
    assert build_infotext("a cat", "", {"Steps": 20}) == "a cat\nSteps: 20"
    assert build_infotext("", "", {"Steps": 20, "Seed": 1}) == "Steps: 20, Seed: 1"
    assert build_infotext("  a cat  ", "", {}) == "a cat"


# ------------------------------------------------------------------------------------- generation_params


class _HiresRequest(Txt2ImgRequest):
    """A request shape with the hires-fix denoising strength that A1111's txt2img carries."""

    denoising_strength: float | None = None
    enable_hr: bool = True  # txt2img writes Denoising strength only with hires fix on


def test_example_d_is_reproduced_byte_for_byte() -> None:
    request = _HiresRequest(
        prompt="masterpiece, 1girl <lora:styleA:0.8>",
        negative_prompt="lowres, bad hands",
        sampler_name="DPM++ 2M",
        scheduler="Karras",
        steps=20,
        cfg_scale=7,
        seed=1234,
        clip_skip=2,
        randn_source=RngSource.GPU,
        denoising_strength=0.5,
    )
    params = generation_params(
        request,
        seed=1234,
        subseed=-1,
        model_name="v1-5-pruned-emaonly",
        model_hash="6ce0161689",
        version="v1.10.1",
        extra={
            "ControlNet 0": CONTROLNET_0,
            "Hires upscale": 2.0,
            "Hires steps": 10,
            "Hires upscaler": "Latent",
            "Lora hashes": "styleA: afac10eceab0",
        },
    )
    assert build_infotext(request.prompt, request.negative_prompt, params) == EXAMPLE_D


def test_full_request_infotext_exact() -> None:
    request = Txt2ImgRequest(
        prompt='a "cat", sitting\non a mat',
        negative_prompt="blurry",
        sampler_name="Euler a",
        scheduler="sgm_uniform",
        steps=25,
        cfg_scale=6.5,
        width=768,
        height=512,
        seed=-1,
        subseed_strength=0.25,
        clip_skip=2,
    )
    params = generation_params(
        request,
        seed=42,
        subseed=77,
        model_name="v1-5-pruned-emaonly",
        model_hash="6ce0161689",
        vae_name="vae-ft-mse-840000-ema-pruned.safetensors",
        vae_hash="735e4c3a44",
        version="v0.1.0",
        extra={"Lora hashes": "styleA: afac10eceab0, styleB: e91ce296493d"},
    )
    expected = (
        'a "cat", sitting\non a mat\n'
        "Negative prompt: blurry\n"
        "Steps: 25, Sampler: Euler a, Schedule type: SGM Uniform, CFG scale: 6.5, Seed: 42, Size: 768x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, "
        "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Variation seed: 77, Variation seed strength: 0.25, "
        'Clip skip: 2, RNG: CPU, Lora hashes: "styleA: afac10eceab0, styleB: e91ce296493d", Version: v0.1.0'
    )
    text = build_infotext(request.prompt, request.negative_prompt, params)
    assert text.encode("utf-8") == expected.encode("utf-8")


def test_default_request_params() -> None:
    params = generation_params(
        Txt2ImgRequest(), seed=1, subseed=2, model_name="m", model_hash=None, version=None
    )
    assert list(params) == ["Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "RNG"]
    assert params["CFG scale"] == 7.0
    assert params["RNG"] == "CPU"


def test_extra_keeps_existing_position_and_version_last() -> None:
    params = generation_params(
        Txt2ImgRequest(randn_source=RngSource.GPU),
        seed=1,
        subseed=2,
        model_name=None,
        model_hash=None,
        version="v1",
        extra={"Hires upscale": 2, "Steps": 30},
    )
    assert list(params) == ["Steps", "Sampler", "CFG scale", "Seed", "Size", "Hires upscale", "Version"]
    assert params["Steps"] == 30


# --------------------------------------------------------------------------------------------- parsing


def test_parse_real_a1111_png() -> None:
    parsed = parse_infotext(DUCK)
    assert parsed["Prompt"] == "photo of a duck"
    assert parsed["Negative prompt"] == "monochrome"
    assert parsed["Steps"] == "15"
    assert parsed["Sampler"] == "UniPC"
    assert parsed["CFG scale"] == "5"
    assert parsed["Seed"] == "235284042"
    assert parsed["Size-1"] == "512"
    assert parsed["Size-2"] == "400"
    assert "Size" not in parsed
    assert parsed["Model hash"] == "c0d1994c73"
    assert parsed["Model"] == "realistic_realisticVisionV20_v20"
    # A1111's defaults for absent keys.
    assert parsed["Clip skip"] == "1"
    assert parsed["Schedule type"] == "Automatic"
    assert parsed["RNG"] == "GPU"
    assert parsed["Hires resize-1"] == 0
    assert parsed["Masked area padding"] == 32
    assert parsed["Mask mode"] == "Inpaint masked"


def test_parse_a1111_docstring_example() -> None:
    parsed = parse_infotext(A1111_DOCSTRING)
    assert parsed["Prompt"] == A1111_DOCSTRING.split("\n")[0]
    assert str(parsed["Negative prompt"]).startswith("ugly, fat, obese")
    assert str(parsed["Negative prompt"]).endswith("messy drawing")
    expected = {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "965400086"}
    assert {key: parsed[key] for key in expected} == expected
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Model hash"]) == ("512", "512", "45dee52b")


def test_parse_example_d_quoted_values() -> None:
    parsed = parse_infotext(EXAMPLE_D)
    assert parsed["Prompt"] == "masterpiece, 1girl <lora:styleA:0.8>"
    assert parsed["Negative prompt"] == "lowres, bad hands"
    assert parsed["ControlNet 0"] == CONTROLNET_0
    assert parsed["Lora hashes"] == "styleA: afac10eceab0"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["Hires upscale"] == "2.0"
    assert parsed["Version"] == "v1.10.1"


def test_parse_multiple_lora_hashes() -> None:
    text = (
        "a <lora:styleA:1> <lora:styleB:0.5>\n"
        'Steps: 20, Sampler: Euler, Seed: 1, Lora hashes: "styleA: afac10eceab0, styleB: e91ce296493d", '
        "Version: f2.0.1v1.10.1"
    )
    parsed = parse_infotext(text)
    assert parsed["Lora hashes"] == "styleA: afac10eceab0, styleB: e91ce296493d"
    assert parsed["Version"] == "f2.0.1v1.10.1"
    assert parsed["Negative prompt"] == ""


def test_parse_escaped_quotes_and_newlines_in_values() -> None:
    text = 'p\nSteps: 1, Seed: 2, Note: "he said \\"hi\\", then\\nleft"'
    assert parse_infotext(text)["Note"] == 'he said "hi", then\nleft'


def test_last_line_with_fewer_than_three_pairs_is_prompt() -> None:
    parsed = parse_infotext("a portrait\nstyle: oil, mood: calm")
    assert parsed["Prompt"] == "a portrait\nstyle: oil, mood: calm"
    assert "style" not in parsed
    assert "Steps" not in parsed


def test_last_line_with_few_pairs_after_negative_is_negative() -> None:
    parsed = parse_infotext("cat\nNegative prompt: dog\nstyle: oil, mood: calm")
    assert parsed["Prompt"] == "cat"
    assert parsed["Negative prompt"] == "dog\nstyle: oil, mood: calm"


def test_negative_prompt_spanning_lines() -> None:
    text = (
        "line one\nline two\nNegative prompt: bad hands,\n  extra fingers  \nlowres\n"
        "Steps: 5, Seed: 3, Size: 64x64"
    )
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "line one\nline two"
    assert parsed["Negative prompt"] == "bad hands,\nextra fingers\nlowres"
    assert (parsed["Steps"], parsed["Size-1"], parsed["Size-2"]) == ("5", "64", "64")


def test_parse_prompt_only() -> None:
    parsed = parse_infotext("just a prompt")
    assert parsed["Prompt"] == "just a prompt"
    assert parsed["Negative prompt"] == ""


def test_parse_legacy_controlnet_keys() -> None:
    text = (
        "x\nSteps: 30, Sampler: DPM++ SDE Karras, CFG scale: 7, Seed: 4193710843, Size: 512x512, "
        "Model hash: cc6cb27103, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, "
        "ControlNet-0 Enabled: True, ControlNet-0 Module: openpose, "
        "ControlNet-0 Model: control_v11p_sd15_openpose [cab727d4], ControlNet-0 Weight: 1"
    )
    parsed = parse_infotext(text)
    assert parsed["ControlNet-0 Model"] == "control_v11p_sd15_openpose [cab727d4]"
    assert parsed["Sampler"] == "DPM++ SDE Karras"
    assert parsed["Denoising strength"] == "0.5"


# --------------------------------------------------------------------------------------------- request fields


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
        ("Euler SGM Uniform", ("Euler", "SGM Uniform")),
        ("Euler Uniform", ("Euler", "Uniform")),
        ("DPM++ SDE Polyexponential", ("DPM++ SDE", "Polyexponential")),
        ("Euler a", ("Euler a", None)),
        ("Karras", ("Karras", None)),
    ],
)
def test_split_legacy_sampler(name: str, expected: tuple[str, str | None]) -> None:
    assert split_legacy_sampler(name) == expected


def test_request_fields_from_real_infotext() -> None:
    fields = request_fields_from_infotext(parse_infotext(DUCK))
    assert fields == {
        "prompt": "photo of a duck",
        "negative_prompt": "monochrome",
        "steps": 15,
        "sampler_name": "UniPC",
        "scheduler": "Automatic",
        "cfg_scale": 5.0,
        "seed": 235284042,
        "width": 512,
        "height": 400,
        "clip_skip": 1,
        "checkpoint": "realistic_realisticVisionV20_v20",
        "randn_source": RngSource.GPU,
    }
    request = Txt2ImgRequest(**fields)  # type: ignore[arg-type]
    assert request.height == 400


def test_request_fields_legacy_sampler_and_extras() -> None:
    text = (
        "cat\nSteps: 30, Sampler: DPM++ SDE Karras, CFG scale: 7.5, Seed: 4193710843, Size: 512x768, "
        "Clip skip: 2, Variation seed: 9, Variation seed strength: 0.3, RNG: CPU, Denoising strength: 0.5, "
        "Hires upscale: 2, Unknown thing: 1, VAE: vae.safetensors"
    )
    parsed = parse_infotext(text)
    fields = request_fields_from_infotext(parsed)
    assert fields["sampler_name"] == "DPM++ SDE"
    assert fields["scheduler"] == "Karras"
    assert fields["cfg_scale"] == 7.5
    assert fields["seed"] == 4193710843
    assert (fields["width"], fields["height"], fields["clip_skip"]) == (512, 768, 2)
    assert (fields["subseed"], fields["subseed_strength"]) == (9, 0.3)
    assert fields["randn_source"] is RngSource.CPU
    assert fields["vae"] == "vae.safetensors"
    assert fields["denoising_strength"] == 0.5  # the hires pass's (Txt2ImgRequest has hires fields)
    Txt2ImgRequest(**fields)  # type: ignore[arg-type]

    hires = request_fields_from_infotext(
        parsed, allowed={"denoising_strength", "enable_hr", "hr_scale", "hr_sampler_name"}
    )
    assert hires == {"denoising_strength": 0.5, "enable_hr": True, "hr_scale": 2.0}


def test_request_fields_schedule_type_and_bad_values() -> None:
    parsed = parse_infotext("p\nSteps: many, Sampler: Euler, Schedule type: Karras, CFG scale: 4, RNG: NV")
    fields = request_fields_from_infotext(parsed)
    assert "steps" not in fields
    assert "randn_source" not in fields
    assert (fields["sampler_name"], fields["scheduler"], fields["cfg_scale"]) == ("Euler", "Karras", 4.0)


def test_request_round_trip_through_infotext() -> None:
    request = Txt2ImgRequest(
        prompt="a fox, (red:1.2)\nsecond line",
        negative_prompt="blurry: bad",
        sampler_name="DPM++ 2M SDE",
        scheduler="Exponential",
        steps=33,
        cfg_scale=4.5,
        width=640,
        height=448,
        seed=123,
        subseed=456,
        subseed_strength=0.5,
        clip_skip=3,
        checkpoint="sd_xl_base_1.0",
    )
    params = generation_params(
        request, seed=123, subseed=456, model_name="sd_xl_base_1.0", model_hash="31e35c80fc", version="v1"
    )
    fields = request_fields_from_infotext(
        parse_infotext(build_infotext(request.prompt, "blurry: bad", params))
    )
    assert Txt2ImgRequest(**fields) == request  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- properties

_NEGATIVE = "Negative prompt:"


def _clean_lines(lines: list[str]) -> str:
    cleaned = [line.strip() for line in lines]
    return "\n".join(line for line in cleaned if not line.startswith(_NEGATIVE)).strip()


_line = st.text(st.characters(exclude_characters="\n", exclude_categories=["Cs"]), max_size=30)
_block = st.lists(_line, max_size=4).map(_clean_lines)
_key = st.from_regex(r"[A-Za-z][A-Za-z ]{0,10}[A-Za-z]", fullmatch=True)
_text_value = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30).filter(
    lambda v: v == v.strip() and not (v.startswith('"') and quote(v) == v)
)
_value = st.one_of(_text_value, st.integers(), st.floats(allow_nan=False, allow_infinity=False))
_params = st.dictionaries(_key, _value, min_size=3, max_size=8).filter(
    lambda d: all(k != str(v) for k, v in d.items()) and not ({"Prompt", "Negative prompt"} & set(d))
)


@settings(max_examples=300, deadline=None)
@given(prompt=_block, negative=_block, params=_params)
def test_build_parse_round_trip(prompt: str, negative: str, params: dict[str, object]) -> None:
    parsed = parse_infotext(build_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    for key, value in params.items():
        text = str(value)
        size = re.fullmatch(r"(\d+)x(\d+)", text)
        if size is not None:
            assert (parsed[f"{key}-1"], parsed[f"{key}-2"]) == size.groups()
        else:
            assert parsed[key] == text
    for key, default in PARSE_DEFAULTS.items():
        if key not in params and key.rsplit("-", 1)[0] not in params:
            assert parsed[key] == default


def test_seed_resize_from_is_written_in_a1111_order_and_parsed_back() -> None:
    request = Txt2ImgRequest(subseed_strength=0.3, seed_resize_from_w=512, seed_resize_from_h=384)
    params = generation_params(request, seed=1, subseed=9, model_name=None, model_hash=None, version=None)
    keys = list(params)
    assert params["Seed resize from"] == "512x384"
    assert keys.index("Variation seed strength") + 1 == keys.index("Seed resize from")
    text = build_infotext("a fox", "", params)
    assert "Variation seed: 9, Variation seed strength: 0.3, Seed resize from: 512x384" in text
    fields = request_fields_from_infotext(parse_infotext(text))
    assert (fields["subseed"], fields["subseed_strength"]) == (9, 0.3)
    assert (fields["seed_resize_from_w"], fields["seed_resize_from_h"]) == (512, 384)
    assert Txt2ImgRequest(**fields).seed_resize_from == (512, 384)


@pytest.mark.parametrize(("width", "height"), [(0, 0), (-1, -1), (512, 0), (-1, 384)])
def test_seed_resize_off_writes_nothing(width: int, height: int) -> None:
    request = Txt2ImgRequest(seed_resize_from_w=width, seed_resize_from_h=height)
    assert request.seed_resize_from is None
    params = generation_params(request, seed=1, subseed=2, model_name=None, model_hash=None, version=None)
    assert "Seed resize from" not in params
