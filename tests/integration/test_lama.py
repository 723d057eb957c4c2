"""LaMa for ``inpaint_only+lama``: Big LaMa's generator in the published file layout (random weights written
by the test), its fill (unmasked pixels unchanged, run at LaMa's 256 short side), the missing-file message,
and the unit in txt2img (the job inpaints the LaMa-filled picture; outside the mask nothing changes)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.lama_files import write_lama
from tests.integration.test_controlnet_inpaint import BOX, _far_from_box, _inpaint_unit
from tests.integration.test_controlnet_service import SMALL, _pixels
from tests.integration.test_img2img_service import picture
from webui.domain.controlnet_modules import LAMA_FILE, resolve_module
from webui.domain.generation import Txt2ImgRequest
from webui.runtime.controlnet.lama import LamaGenerator, lama_fill, load_lama
from webui.runtime.controlnet.preprocessors import AnnotatorStore, AnnotatorWeightsMissing, Preprocessors


@pytest.fixture(scope="module")
def lama_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lama(tmp_path_factory.mktemp("lama") / LAMA_FILE)


def test_the_generator_has_big_lamas_published_layout() -> None:
    state = LamaGenerator().state_dict()
    shapes = {
        "model.1.ffc.convl2l.weight": (64, 4, 7, 7),  # RGB with the hole blanked, plus the mask
        "model.4.ffc.convl2g.weight": (384, 256, 3, 3),  # the last downsampling opens the global branch
        "model.5.conv1.ffc.convg2g.conv1.0.weight": (192, 384, 1, 1),
        "model.5.conv1.ffc.convg2g.fu.conv_layer.weight": (384, 384, 1, 1),  # the spectrum's 1x1 conv
        "model.22.conv2.bn_g.running_var": (384,),  # the 18th block
        "model.24.weight": (512, 256, 3, 3),  # the first transposed convolution
        "model.34.weight": (3, 64, 7, 7),
    }
    assert {key: tuple(state[key].shape) for key in shapes} == shapes
    weights = sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)
    assert round(weights / 1e6) == 51  # Big LaMa's 51 M parameters


def test_load_and_fill_keep_the_unmasked_pixels(lama_file: Path) -> None:
    model = load_lama(lama_file)
    saved = torch.load(lama_file, weights_only=True)
    assert torch.equal(
        model.state_dict()["model.5.conv1.bn_l.running_mean"], saved["model.5.conv1.bn_l.running_mean"]
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    mask = Image.new("L", (128, 96), 0)
    mask.paste(255, (40, 30, 80, 70))
    seen: list[tuple[int, ...]] = []
    hook = model.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    filled = lama_fill(model, image, mask)
    hook.remove()
    assert seen == [(1, 4, 256, 384)]  # short side 256 (LaMa's size), a multiple of 64
    before, after = np.asarray(image), np.asarray(filled)
    assert filled.size == image.size
    outside = np.asarray(mask) == 0
    assert np.array_equal(after[outside], before[outside])
    assert np.abs(after[~outside].astype(int) - before[~outside]).mean() > 5  # the hole was painted


def test_a_wrong_file_and_a_missing_file_say_what_to_do(tmp_path: Path) -> None:
    wrong = tmp_path / LAMA_FILE
    torch.save({"model.1.ffc.convl2l.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match=f"{LAMA_FILE} is not Big LaMa's generator"):
        load_lama(wrong)
    runner = Preprocessors(AnnotatorStore(tmp_path / "empty", allow_download=False))
    with pytest.raises(AnnotatorWeightsMissing) as caught:
        runner.lama_fill(picture(), Image.new("L", (64, 64), 255))
    assert caught.value.filename == LAMA_FILE and "lllyasviel/Annotators" in str(caught.value)
    assert resolve_module("inpaint_only+lama").weight_files == (LAMA_FILE,)


def test_inpaint_only_lama_in_txt2img_repaints_only_the_mask(cn_services: Any, lama_file: Path) -> None:
    target = cn_services.settings.annotators_path / LAMA_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(lama_file.read_bytes())
    unit = _inpaint_unit(cn_services, "inpaint_only+lama")
    result = cn_services.generation.txt2img(Txt2ImgRequest(**SMALL, controlnet_units=[unit]))
    made, source = _pixels(result)[0], np.asarray(picture())
    far = _far_from_box()
    assert np.array_equal(made[far], source[far])
    assert "Module: inpaint_only+lama" in result.images[0].infotext
    plain = cn_services.generation.txt2img(
        Txt2ImgRequest(**SMALL, controlnet_units=[_inpaint_unit(cn_services, "inpaint_only")])
    )
    left, top, right, bottom = BOX
    differs = made[top:bottom, left:right].astype(int) - _pixels(plain)[0][top:bottom, left:right]
    assert np.abs(differs).mean() > 1  # the repaint started from LaMa's fill, not from the old square
    shown = Image.open(io.BytesIO(result.detected_maps[0].png_bytes))
    assert shown.size == (64, 64)


@pytest.fixture
def client(data_dir: Path) -> Iterator[Any]:
    from tests.api.test_api_core import _client

    yield from _client(data_dir)


def test_detect_over_the_api_fills_the_mask(client: Any, lama_file: Path) -> None:
    import base64

    from tests.integration.test_img2img_service import b64, square_mask

    body = {"controlnet_module": "inpaint_only+lama", "controlnet_input_images": [b64(picture())]}
    refused = client.post("/controlnet/detect", json=body)
    assert refused.status_code == 422 and "controlnet_masks" in refused.json()["detail"]
    missing = client.post(
        "/controlnet/detect", json={**body, "controlnet_masks": [b64(square_mask((64, 64), BOX))]}
    )
    assert missing.status_code >= 400 and LAMA_FILE in missing.text  # names the file to put in place
    target = client.services.settings.annotators_path / LAMA_FILE  # type: ignore[attr-defined]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(lama_file.read_bytes())
    answer = client.post(
        "/controlnet/detect", json={**body, "controlnet_masks": [b64(square_mask((64, 64), BOX))]}
    )
    assert answer.status_code == 200, answer.text
    filled = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).convert("RGB"))
    source = np.asarray(picture())
    outside = np.asarray(square_mask((64, 64), BOX).convert("L")) == 0
    assert np.array_equal(filled[outside], source[outside]) and not np.array_equal(filled, source)
