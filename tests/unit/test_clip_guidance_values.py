"""CLIP guidance settings as values: validation, the infotext field, and the round trip through a request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from webui.domain.clip_guidance import ClipGuidance, active, format_infotext, parse_infotext
from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.metadata.infotext import (
    build_infotext,
    generation_params,
    request_fields_from_infotext,
)
from webui.metadata.infotext import (
    parse_infotext as parse_params,
)


def test_off_unless_a_positive_scale() -> None:
    assert not active(None)
    assert not active(ClipGuidance())
    assert active(ClipGuidance(scale=200))
    assert Txt2ImgRequest().clip_guidance is None


@pytest.mark.parametrize(
    "fields", [{"scale": -1}, {"scale": 200, "every": 0}, {"scale": 200, "cutouts": 0}, {"cutouts": 99}]
)
def test_out_of_range_values_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ClipGuidance.model_validate(fields)


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="steps"):
        Txt2ImgRequest(clip_guidance={"scale": 1, "steps": 3})


def test_guided_steps_never_include_the_last() -> None:
    assert ClipGuidance(scale=1, every=1).guided_steps(20) == 19
    assert ClipGuidance(scale=1, every=2).guided_steps(20) == 9
    assert ClipGuidance(scale=1, every=5).guided_steps(5) == 0


def test_infotext_value_round_trips() -> None:
    guidance = ClipGuidance(scale=200, every=2, cutouts=4)
    text = format_infotext(guidance, "easel-reference-clip")
    assert text == "200 (every 2, 4 cutouts, easel-reference-clip)"
    assert parse_infotext(text) == {"scale": 200.0, "every": 2, "cutouts": 4, "model": "easel-reference-clip"}
    assert parse_infotext("150.5 (every 1, 1 cutouts, clip (b/32))") == {
        "scale": 150.5, "every": 1, "cutouts": 1, "model": "clip (b/32)",
    }  # fmt: skip
    assert parse_infotext("80") == {"scale": 80.0}


@pytest.mark.parametrize("value", ["", "lots", "200 (every 0, 4 cutouts, m)", "200 (often)", "-5"])
def test_unusable_infotext_values_are_skipped(value: str) -> None:
    assert parse_infotext(value) is None


@pytest.mark.parametrize("cls", [Txt2ImgRequest, Img2ImgRequest])
def test_request_round_trips_through_the_infotext(cls: type) -> None:
    """The infotext field is written by the service (it knows the model used); reading it back gives the
    request's ``clip_guidance``, for PNG Info, paste and the API's ``infotext`` field."""
    extra = {"init_images": ["x"]} if cls is Img2ImgRequest else {}
    guidance = ClipGuidance(scale=250, every=3, cutouts=2, model="easel-reference-clip")
    request = cls(prompt="a red circle", clip_guidance=guidance, **extra)
    params = generation_params(
        request, seed=1, subseed=1, model_name="m", model_hash=None, version=None,
        extra={"CLIP guidance": format_infotext(guidance, "easel-reference-clip")},
    )  # fmt: skip
    infotext = build_infotext(request.prompt, "", params)
    assert 'CLIP guidance: "250 (every 3, 4 cutouts' not in infotext
    assert 'CLIP guidance: "250 (every 3, 2 cutouts, easel-reference-clip)"' in infotext
    fields = request_fields_from_infotext(parse_params(infotext))
    assert cls(**{**extra, **fields}).clip_guidance == guidance


def test_infotext_without_guidance_gives_no_field() -> None:
    fields = request_fields_from_infotext(parse_params("a cat\nSteps: 20, Sampler: Euler, Seed: 1"))
    assert "clip_guidance" not in fields
