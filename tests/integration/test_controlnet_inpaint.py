"""The inpaint ControlNet modules: ``inpaint_only`` and ``inpaint_global_harmonious`` with unit masks.

The tiny ControlNet has random weights, so these tests check what the modules do with pictures and masks
(the hint, what is kept, which mask is used, the errors), not that a trained inpaint ControlNet paints well.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.integration.test_controlnet_service import SMALL, _pixels, _unit
from tests.integration.test_img2img_service import b64, picture, square_mask
from webui.domain.controlnet_modules import control_types
from webui.domain.generation import Img2ImgRequest, Txt2ImgRequest
from webui.runtime.controlnet.apply import ControlPlan, ControlUnitInput
from webui.services.controlnet import ControlNetInputError
from webui.services.img2img import ImageInputError

BOX = (24, 24, 40, 40)
BLUR_REACH = 14  # img2img's mask blur (4) spreads at most this far past the mask's edge


def _far_from_box(size: int = 64) -> np.ndarray:
    """True for pixels farther than the blur's reach from ``BOX``: those must come back unchanged."""
    ys, xs = np.mgrid[0:size, 0:size]
    left, top, right, bottom = BOX
    dx = np.maximum(np.maximum(left - xs, xs - right), 0)
    dy = np.maximum(np.maximum(top - ys, ys - bottom), 0)
    return np.maximum(dx, dy) > BLUR_REACH


def _inpaint_unit(services: Any, module: str = "inpaint_only", **change: Any) -> Any:
    fields = {"image": b64(picture()), "mask": b64(square_mask((64, 64), BOX)), **change}
    return _unit(services, module=module, **fields)


def test_hint_is_minus_one_where_the_mask_paints() -> None:
    image = Image.new("RGB", (8, 8), (255, 128, 0))
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))
    unit = ControlUnitInput(control=None, image=image, mask=mask)
    hint = unit.hint(8, 8, torch.device("cpu"), torch.float32)[0]
    assert torch.all(hint[:, :, :4] == -1.0)
    assert torch.allclose(hint[:, 0, 4], torch.tensor([1.0, 128 / 255, 0.0]))
    # fitted like the picture: at twice the size the masked half is still the left half
    doubled = unit.hint(16, 16, torch.device("cpu"), torch.float32)[0]
    assert torch.all(doubled[:, :, :8] == -1.0) and torch.all(doubled[:, :, 8:] >= 0)


def test_cropped_plan_follows_the_only_masked_region() -> None:
    image = Image.new("RGB", (128, 64))
    image.paste((255, 0, 0), (64, 0, 128, 64))  # the right half is red
    mask = Image.new("L", (128, 64), 0)
    unit = ControlUnitInput(control=None, image=image, mask=mask)
    # the control map is at twice the picture's size: the region scales with it
    cropped = ControlPlan([unit]).cropped((32, 0, 64, 32), (64, 32)).units[0]
    assert cropped.image.size == (64, 64) and cropped.mask is not None and cropped.mask.size == (64, 64)
    assert cropped.image.getpixel((0, 0)) == (255, 0, 0)
    assert unit.image.size == (128, 64)  # the job's plan itself is unchanged


def test_inpaint_only_in_txt2img_keeps_everything_outside_the_mask(cn_services: Any) -> None:
    request = Txt2ImgRequest(**SMALL, controlnet_units=[_inpaint_unit(cn_services)])
    result = cn_services.generation.txt2img(request)
    made = _pixels(result)[0]
    source = np.asarray(picture())
    far = _far_from_box()
    assert far.sum() > 1000
    assert np.array_equal(made[far], source[far])
    left, top, right, bottom = BOX
    inside = made[top:bottom, left:right].astype(int) - source[top:bottom, left:right]
    assert np.abs(inside).mean() > 10  # the masked square was painted anew
    assert "Module: inpaint_only" in result.images[0].infotext
    shown = np.asarray(Image.open(__import__("io").BytesIO(result.detected_maps[0].png_bytes)).convert("RGB"))
    assert shown[32, 32].tolist() == [0, 0, 0] and shown[2, 40].tolist() == source[2, 40].tolist()


def test_global_harmonious_repaints_everything_and_reads_the_mask(cn_services: Any) -> None:
    generation = cn_services.generation
    harmonious = generation.txt2img(
        Txt2ImgRequest(**SMALL, controlnet_units=[_inpaint_unit(cn_services, "inpaint_global_harmonious")])
    )
    made = _pixels(harmonious)[0]
    plain = _pixels(generation.txt2img(Txt2ImgRequest(**SMALL)))[0]
    assert not np.array_equal(made, plain)  # a txt2img the unit controls, not an inpainting of its picture
    other_mask = b64(square_mask((64, 64), (0, 0, 20, 63)))
    moved = generation.txt2img(
        Txt2ImgRequest(
            **SMALL,
            controlnet_units=[_inpaint_unit(cn_services, "inpaint_global_harmonious", mask=other_mask)],
        )
    )
    assert not np.array_equal(made, _pixels(moved)[0])  # the mask reaches the ControlNet's hint


def test_img2img_inpaint_unit_takes_the_inpaint_mask(cn_services: Any) -> None:
    generation = cn_services.generation
    common = {
        **SMALL,
        "init_images": [b64(picture())],
        "mask": b64(square_mask((64, 64), BOX)),
        "denoising_strength": 0.9,
    }
    no_mask = _unit(cn_services, module="inpaint_only", image=None)
    taken = generation.img2img(Img2ImgRequest(**common, controlnet_units=[no_mask]))
    same = _unit(cn_services, module="inpaint_only", image=None, mask=common["mask"])
    given = generation.img2img(Img2ImgRequest(**common, controlnet_units=[same]))
    assert np.array_equal(_pixels(taken)[0], _pixels(given)[0])
    other = _unit(
        cn_services, module="inpaint_only", image=None, mask=b64(square_mask((64, 64), (0, 0, 63, 10)))
    )
    moved = generation.img2img(Img2ImgRequest(**common, controlnet_units=[other]))
    assert not np.array_equal(_pixels(taken)[0], _pixels(moved)[0])
    # "Only masked" crops the unit's picture and mask with the init image
    cropped = generation.img2img(
        Img2ImgRequest(
            **common, inpaint_full_res=True, inpaint_full_res_padding=4, controlnet_units=[no_mask]
        )
    )
    far = _far_from_box()
    assert np.array_equal(_pixels(cropped)[0][far], np.asarray(picture())[far])


@pytest.mark.parametrize(
    ("change", "request_change", "message"),
    [
        ({"mask": None}, {}, "there is no mask"),
        ({"mask": b64(square_mask((32, 32), (0, 0, 8, 8)))}, {}, "must have the image's size"),
        ({"mask": "bm90IGFuIGltYWdl"}, {}, "not a readable image"),
        ({}, {"enable_hr": True, "hr_scale": 2.0, "denoising_strength": 0.5}, "Hires. fix"),
    ],
)
def test_bad_inpaint_units_fail_before_queueing(
    cn_services: Any, change: dict, request_change: dict, message: str
) -> None:
    request = Txt2ImgRequest(
        **SMALL, **request_change, controlnet_units=[_inpaint_unit(cn_services, **change)]
    )
    with pytest.raises((ControlNetInputError, ImageInputError), match=message):
        cn_services.generation.submit_txt2img(request)
    assert cn_services.generation.pending() == 0


def test_inpaint_is_a_control_type() -> None:
    inpaint = control_types(["control_v11p_sd15_inpaint [be8bc0ed]", "control_v11p_sd15_canny [d14c016b]"])[
        "Inpaint"
    ]
    modules = ["none", "inpaint_global_harmonious", "inpaint_only", "inpaint_only+lama"]
    assert inpaint["module_list"] == modules
    assert inpaint["default_option"] == "inpaint_only"
    assert inpaint["model_list"] == ["None", "control_v11p_sd15_inpaint [be8bc0ed]"]
