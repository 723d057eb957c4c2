"""The merger's pure rules: method names, multiplier, new names, A1111's default names, family pairs."""

from __future__ import annotations

import pytest

from webui.domain.merge import (
    MergeError,
    check_multiplier,
    check_precision,
    clean_name,
    default_name,
    family_problem,
    method_id,
)
from webui.domain.models import ModelFamily


def test_methods_by_id_or_a1111_label() -> None:
    assert method_id("weighted_sum") == "weighted_sum"
    assert method_id("Add difference") == "add_difference"
    assert method_id(" No interpolation ") == "no_interpolation"
    with pytest.raises(MergeError, match="Unknown merge method 'sum'"):
        method_id("sum")
    assert check_precision("FP32") == "fp32"
    with pytest.raises(MergeError, match="'bf16'"):
        check_precision("bf16")


@pytest.mark.parametrize("value", [-0.01, 1.01, float("nan"), float("inf")])
def test_multiplier_outside_zero_to_one_is_refused(value: float) -> None:
    with pytest.raises(MergeError, match="between 0 and 1"):
        check_multiplier(value)


def test_names() -> None:
    assert clean_name("  my merge.safetensors ") == "my merge"
    assert clean_name("v1.5 + style") == "v1.5 + style"
    assert clean_name("") == "" and clean_name(".safetensors") == ""
    for bad in ("sub/name", "..\\up", ".hidden", "a\x00b", "é" * 101, "\udc80"):
        with pytest.raises(MergeError, match="cannot be a checkpoint name"):
            clean_name(bad)


def test_default_names_are_a1111s() -> None:
    assert default_name("weighted_sum", "a", "b", None, 0.3) == "0.7(a) + 0.3(b)"
    assert default_name("add_difference", "a", "b", "c", 1.0) == "a + 1.0(b - c)"
    assert default_name("no_interpolation", "a", None, None, 0.3) == "a"


def test_families() -> None:
    sd1, inpaint, sdxl = ModelFamily.SD1, ModelFamily.SD1_INPAINT, ModelFamily.SDXL
    assert family_problem(sd1, sd1, "a", "b") is None
    assert family_problem(inpaint, sd1, "a", "b") is None  # an inpainting A takes a plain B of its family
    assert family_problem(inpaint, inpaint, "a", "b") is None
    assert "choose the inpainting model as the primary model (A)" in str(
        family_problem(sd1, inpaint, "a", "b")
    )
    assert family_problem(sd1, sdxl, "a", "b") == (
        "a (SD 1.x) and b (SDXL base) are of different families; "
        "only checkpoints of one family can be merged."
    )
    assert family_problem(ModelFamily.SD2, ModelFamily.SD2_V, "a", "b") is not None
