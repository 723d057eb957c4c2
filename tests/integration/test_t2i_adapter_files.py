"""Single-file T2I-Adapters: diffusers' keys or TencentARC's original ones, ``.safetensors`` or ``.pth``.

One tiny full adapter (two blocks per level, so the original layout's flat block numbering is exercised) is
written in every file layout; each must list as a T2I-Adapter and load to the same adapter, computing
bit for bit what the in-memory one computes. The light (colour) and style adapters are refused by name.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from webui.domain.controlnet_models import ControlNetKind, ControlNetLayout
from webui.registry.controlnet import scan_controlnets
from webui.runtime.controlnet.models import load_controlnet
from webui.runtime.ldm_layout import save_single_file

BLOCKS = 2


def tiny_adapter(adapter_type: str = "full_adapter", seed: int = 3) -> Any:
    from diffusers import T2IAdapter

    xl = adapter_type == "full_adapter_xl"
    torch.manual_seed(seed)
    adapter = T2IAdapter(
        in_channels=3,
        channels=[8, 16, 32, 32] if xl else [16, 32, 32],
        num_res_blocks=BLOCKS,
        downscale_factor=16 if xl else 8,
        adapter_type=adapter_type,
    )
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0, 0.1)
    return adapter.eval()


def original_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' keys → TencentARC's: ``adapter.body.{level}.resnets.{block}`` is
    ``body.{level * 2 + block}``; a level's ``in_conv`` sits on its first block."""
    out = {}
    for key, tensor in state.items():
        key = key.removeprefix("adapter.")
        if found := re.match(r"body\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            key = f"body.{int(found.group(1)) * BLOCKS + int(found.group(2))}.{found.group(3)}"
        elif found := re.match(r"body\.(\d+)\.in_conv\.(.*)", key):
            key = f"body.{int(found.group(1)) * BLOCKS}.in_conv.{found.group(2)}"
        out[key] = tensor.contiguous()
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ControlNet")
    adapter, xl = tiny_adapter(), tiny_adapter("full_adapter_xl")
    state = {key: tensor.contiguous() for key, tensor in adapter.state_dict().items()}
    save_single_file(root / "t2i-adapter_diffusers_tiny.safetensors", state)
    save_single_file(root / "t2iadapter_tiny_sd15v2.safetensors", original_keys(state))
    torch.save(original_keys(state), root / "t2iadapter_tiny_sd14v1.pth")
    save_single_file(root / "t2i-adapter_diffusers_xl_tiny.safetensors", dict(xl.state_dict()))
    light = {
        "body.0.in_conv.weight": torch.zeros(4, 192, 1, 1),
        "body.0.body.0.block1.weight": torch.zeros(4, 4, 3, 3),
        "body.0.out_conv.weight": torch.zeros(16, 4, 1, 1),
    }
    save_single_file(root / "t2iadapter_color_sd14v1.safetensors", light)
    save_single_file(
        root / "t2iadapter_style_sd14v1.safetensors", {"style_embedding": torch.zeros(1, 8, 1024)}
    )
    return {"models": {"sd": adapter, "xl": xl}, "records": {r.name: r for r in scan_controlnets(root)}}


def _features(model: Any, size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return list(model(torch.rand(1, 3, size, size, generator=generator)))


@pytest.mark.parametrize(
    "name",
    [
        "t2i-adapter_diffusers_tiny.safetensors",
        "t2iadapter_tiny_sd15v2.safetensors",
        "t2iadapter_tiny_sd14v1.pth",
    ],
)
def test_every_file_layout_loads_to_the_same_adapter(adapters: dict[str, Any], name: str) -> None:
    record = adapters["records"][name]
    assert record.error is None
    if name.endswith(".safetensors"):  # a pickle is not opened while scanning: known once loaded
        assert (record.kind, record.layout) == (ControlNetKind.T2I_ADAPTER, ControlNetLayout.T2I_ADAPTER_FILE)
    loaded = load_controlnet(record, torch.float32)
    assert (loaded.kind, loaded.downscale, loaded.is_sdxl) == (ControlNetKind.T2I_ADAPTER, 8, False)
    expected, got = _features(adapters["models"]["sd"], 64), _features(loaded.model, 64)
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_the_sdxl_adapter_is_known_by_its_pixel_unshuffle(adapters: dict[str, Any]) -> None:
    record = adapters["records"]["t2i-adapter_diffusers_xl_tiny.safetensors"]
    assert (record.kind, record.base) == (ControlNetKind.T2I_ADAPTER, "sdxl")
    loaded = load_controlnet(record, torch.float32)
    assert loaded.model.config.adapter_type == "full_adapter_xl"
    assert (loaded.downscale, loaded.is_sdxl) == (8, True)  # unshuffled by 16, upsampled once inside
    expected, got = _features(adapters["models"]["xl"], 128), _features(loaded.model, 128)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_light_and_style_adapters_are_listed_with_the_reason(adapters: dict[str, Any]) -> None:
    light = adapters["records"]["t2iadapter_color_sd14v1.safetensors"].error
    style = adapters["records"]["t2iadapter_style_sd14v1.safetensors"].error
    assert light and "light" in light and "not supported" in light
    assert style and "style adapter" in style and "not supported" in style


def test_an_adapter_of_other_widths_is_refused_with_the_reason(
    adapters: dict[str, Any], tiny_model_files: dict[str, Any], tmp_path: Any
) -> None:
    from webui.registry.scanner import scan_checkpoints
    from webui.runtime.controlnet.apply import ControlError
    from webui.runtime.engine import Engine
    from webui.runtime.loader import load_checkpoint

    path = tiny_model_files["sd15_single"]
    checkpoint = next(r for r in scan_checkpoints(path.parent) if r.path == str(path))
    model = load_checkpoint(checkpoint, dtype=torch.float32, tokenizer_cache=tmp_path / "tok")
    engine = Engine(
        device="cpu", precision="fp32", attention="sdpa", memory_mode="normal", models_in_ram=1,
        tokenizer_cache=tmp_path / "tok",
    )  # fmt: skip
    with pytest.raises(ControlError, match=r"16-channel features.*starts with 32 channels"):
        engine.controlnet(adapters["records"]["t2iadapter_tiny_sd15v2.safetensors"], model)


def test_an_adapter_for_another_vae_scale_is_refused_before_the_step_runs(adapters: dict[str, Any]) -> None:
    """Features at 1/8 of the picture for a UNet working at 1/4 (as with the reference model): a clear
    ControlError when the features are first made, not a tensor-size error inside the UNet."""
    from PIL import Image

    from webui.runtime.controlnet.apply import ControlError, ControlSession, ControlUnitInput

    loaded = load_controlnet(adapters["records"]["t2iadapter_tiny_sd15v2.safetensors"], torch.float32)
    unit = ControlUnitInput(control=loaded, image=Image.new("RGB", (64, 64)))
    hint = torch.zeros(1, 3, 64, 64)
    assert len(ControlSession._adapter_features(unit, hint, 2, (8, 8))) == 3  # 64 px / 8: fits
    with pytest.raises(ControlError, match=r"makes features of \(8, 8\) for latents of \(16, 16\)"):
        ControlSession._adapter_features(
            ControlUnitInput(control=loaded, image=unit.image), hint, 2, (16, 16)
        )
