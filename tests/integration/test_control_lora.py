"""Control-LoRAs: listed, built on the loaded checkpoint's UNet, equal to the full ControlNet they stand for.

The test writes one SDXL ControlNet twice: as an ordinary original-layout file (``control_model.*``) and as
a Control-LoRA (Stability's layout: ``.up`` / ``.down`` differences to the tiny SDXL checkpoint's UNet for
some layers, full tensors for the hint encoder, the zero convolutions and a changed bias, the
``lora_controlnet`` marker, everything else left to the UNet). Built against that checkpoint, the
Control-LoRA must give the full file's weights bit for bit, whatever LoRA is merged into the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.fixtures.controlnet_files import CONDITIONING_CHANNELS, controlnet_inputs
from tests.fixtures.lora_files import kohya_lora
from webui.domain.controlnet_models import ControlNetLayout
from webui.domain.lora import ActiveLora
from webui.registry.controlnet import scan_controlnets
from webui.registry.scanner import scan_checkpoints
from webui.runtime.controlnet.apply import ControlError
from webui.runtime.controlnet.control_lora import base_encoder
from webui.runtime.controlnet.models import ControlNetCache, ControlNetLoadError
from webui.runtime.engine import Engine
from webui.runtime.ldm_layout import UNET_PREFIX, convert_controlnet, convert_unet, save_single_file
from webui.runtime.loader import load_checkpoint

RANK = 2
HINT_KEYS = ("input_hint_block.", "zero_convs.", "middle_block_out.")


def _hint() -> Any:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), outline="white", width=3)
    return image


def _engine(folder: Path) -> Engine:
    return Engine(
        device="cpu", precision="fp32", attention="sdpa", memory_mode="normal", models_in_ram=1,
        tokenizer_cache=folder / "tok",
    )  # fmt: skip


def _load(path: Path, cache: Path) -> Any:
    record = next(r for r in scan_checkpoints(path.parent) if Path(r.path) == path)
    return load_checkpoint(record, dtype=torch.float32, tokenizer_cache=cache)


@pytest.fixture(scope="module")
def built(tiny_model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from diffusers import ControlNetModel

    folder = tmp_path_factory.mktemp("control-lora")
    model = _load(tiny_model_files["sdxl_single"], folder / "tok")
    base = base_encoder(model)
    shape_of = convert_controlnet(
        ControlNetModel.from_unet(model.unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS),
        prefix="",
    )
    generator = torch.Generator().manual_seed(7)
    control: dict[str, torch.Tensor] = {"lora_controlnet": torch.zeros(1)}
    full = dict(base)
    for key, tensor in shape_of.items():  # what a UNet lacks: in full
        if key.startswith(HINT_KEYS):
            control[key] = full[key] = torch.randn(tensor.shape, generator=generator) * 0.05
    lowrank = [k for k, t in base.items() if k.endswith(".weight") and (t.ndim == 2 or t.shape[-1] == 3)][::7]
    lowrank.append("label_emb.0.0.weight")  # SDXL's size/crop embedding: how a Control-LoRA shows it is SDXL
    assert any(base[k].ndim == 4 for k in lowrank) and any(base[k].ndim == 2 for k in lowrank)
    for key in lowrank:
        weight = base[key]
        stem = key[: -len(".weight")]
        up = torch.randn(weight.shape[0], RANK, *([1, 1] if weight.ndim == 4 else []), generator=generator)
        down = torch.randn(RANK, *weight.shape[1:], generator=generator)
        control[f"{stem}.up"], control[f"{stem}.down"] = up * 0.1, down * 0.1
        delta = (up * 0.1).flatten(1) @ (down * 0.1).flatten(1)
        full[key] = weight.float() + delta.reshape(weight.shape)
    bias = next(k for k in base if k.endswith(".bias"))
    control[bias] = full[bias] = base[bias] + 1.0  # a changed tensor, stored in full
    root = folder / "ControlNet"
    save_single_file(root / "control-lora-tiny-rank2.safetensors", control)
    save_single_file(
        root / "control-tiny-full.safetensors", {f"control_model.{k}": v for k, v in full.items()}
    )
    records = {r.name: r for r in scan_controlnets(root)}
    return {"model": model, "records": records, "lowrank": lowrank, "folder": folder}


def test_a_control_lora_is_listed_as_an_sdxl_controlnet(built: dict[str, Any]) -> None:
    record = built["records"]["control-lora-tiny-rank2.safetensors"]
    assert record.error is None
    assert (record.layout, record.base, record.context_dim) == (ControlNetLayout.CONTROL_LORA, "sdxl", 192)


def test_it_equals_the_full_controlnet_it_stands_for(built: dict[str, Any]) -> None:
    cache = ControlNetCache(capacity=3)
    records, model = built["records"], built["model"]
    full = cache.get(records["control-tiny-full.safetensors"], torch.float32)
    made = cache.get(records["control-lora-tiny-rank2.safetensors"], torch.float32, base_model=model)
    expected, got = full.model.state_dict(), made.model.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert (made.is_sdxl, made.context_dim) == (True, 192)
    inputs = controlnet_inputs(made.model, batch=1)
    with torch.no_grad():
        _down, mid = made.model(**inputs, return_dict=False)
    assert torch.isfinite(mid).all() and mid.abs().sum() > 0
    assert cache.get(records["control-lora-tiny-rank2.safetensors"], torch.float32, base_model=model) is made
    with pytest.raises(ControlNetLoadError, match="built on a checkpoint"):
        ControlNetCache().get(records["control-lora-tiny-rank2.safetensors"], torch.float32)


def test_a_lora_merged_into_the_checkpoint_stays_out_of_it(
    built: dict[str, Any], tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    model = _load(tiny_model_files["sdxl_single"], built["folder"] / "tok")
    clean = {key: tensor.clone() for key, tensor in base_encoder(model).items()}
    made = ControlNetCache().get(
        built["records"]["control-lora-tiny-rank2.safetensors"], torch.float32, "cpu", model
    )
    before = {key: tensor.clone() for key, tensor in made.model.state_dict().items()}
    lora = tmp_path / "style.safetensors"
    save_single_file(lora, kohya_lora(model.unet, sdxl=True, dtype=torch.float32, scale=1.0))
    report = _engine(tmp_path).apply_loras(model, [ActiveLora("style", str(lora), "style-key", 1.0, 1.0)])
    assert report.touched > 0
    merged = convert_unet(model.unet)
    assert any(not torch.equal(merged[UNET_PREFIX + key], clean[key]) for key in clean)  # the UNet has it ...
    after = base_encoder(model)
    assert clean.keys() == after.keys()
    assert all(torch.equal(clean[key], after[key]) for key in clean)  # ... the Control-LoRA's base does not
    assert all(torch.equal(before[k], t) for k, t in made.model.state_dict().items())  # shares no tensor


def test_it_refuses_a_checkpoint_of_another_family(
    built: dict[str, Any], tmp_path: Path, tiny_model_files: dict[str, Path]
) -> None:
    sd15 = _load(tiny_model_files["sd15_single"], tmp_path / "tok")
    with pytest.raises(ControlError, match="SDXL Control-LoRA"):
        _engine(tmp_path).controlnet(built["records"]["control-lora-tiny-rank2.safetensors"], sd15)


def test_txt2img_with_a_control_lora_unit_over_the_api(
    built: dict[str, Any], data_dir: Path, tiny_model_files: dict[str, Path]
) -> None:
    """The same job with the Control-LoRA and with the full file it stands for gives the same image."""
    import base64
    import io
    import json
    import shutil

    import numpy as np
    from PIL import Image

    from tests.api.test_api_core import _client
    from tests.integration.test_img2img_service import b64

    shutil.copy(
        tiny_model_files["sdxl_single"], data_dir / "models" / "Stable-diffusion" / "tiny-sdxl.safetensors"
    )
    controlnets = data_dir / "models" / "ControlNet"
    controlnets.mkdir(parents=True, exist_ok=True)
    for record in built["records"].values():
        shutil.copy(record.path, controlnets / Path(record.path).name)
    images, infos = [], []
    for client in _client(data_dir):
        for model in ("control-lora-tiny-rank2", "control-tiny-full", None):
            unit = {
                "enabled": model is not None,
                "module": "none",
                "model": model or "None",
                "image": b64(_hint()),
            }
            body = {
                "prompt": "a lighthouse", "steps": 3, "width": 64, "height": 64, "seed": 11,
                "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}, "save_images": False,
                "alwayson_scripts": {"controlnet": {"args": [unit]}},
            }  # fmt: skip
            response = client.post("/sdapi/v1/txt2img", json=body)
            assert response.status_code == 200, response.text
            images.append(response.json()["images"][0])
            infos.append(json.loads(response.json()["info"])["infotexts"][0])
    assert "Model: control-lora-tiny-rank2 [" in infos[0]
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(image)))) for image in images]
    assert np.array_equal(pixels[0], pixels[1])  # the infotexts differ (the model's name), the pixels not
    assert not np.array_equal(pixels[0], pixels[2])  # and the unit did steer the image
