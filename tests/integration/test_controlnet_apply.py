"""ControlPlan / ControlSession: the UNet hook that adds ControlNet residuals, against direct calls."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from tests.fixtures.tiny_models import tiny_sd15_components
from webui.runtime.controlnet.apply import (
    MODE_CONTROL,
    MODE_PROMPT,
    ControlPlan,
    ControlUnitInput,
    _block_scales,
    fit_control_image,
)

BATCH = 1


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return tiny_sd15_components()["unet"]


def _controlnet(unet: torch.nn.Module, seed: int) -> SimpleNamespace:
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).eval()
    with torch.no_grad():  # from_unet starts the zero convolutions at zero: give them weights to see
        for block in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
            block.weight.normal_(0, 0.2)
            block.bias.normal_(0, 0.2)
    return SimpleNamespace(
        model=model, kind="controlnet", downscale=2, is_sdxl=False, context_dim=64, dtype=model.dtype
    )


@pytest.fixture(scope="module")
def controls(unet: torch.nn.Module) -> tuple[SimpleNamespace, SimpleNamespace]:
    return _controlnet(unet, 1), _controlnet(unet, 2)


def _image(seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(16, 16, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def _inputs(rows: int = 2 * BATCH) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn(rows, 4, 8, 8, generator=generator)
    context = torch.randn(rows, 5, 64, generator=generator)
    return sample, torch.tensor(500), context


def _plain(unet: torch.nn.Module, **extra: object) -> torch.Tensor:
    sample, timestep, context = _inputs()
    with torch.inference_mode():
        return unet(sample, timestep, encoder_hidden_states=context, **extra).sample


def _controlled(
    unet: torch.nn.Module,
    units: list[ControlUnitInput],
    step: int = 0,
    total: int = 4,
    pass_name: str = "single",
) -> torch.Tensor:
    sample, timestep, context = _inputs()
    with ControlPlan(units).session(unet, batch=BATCH, total_steps=total, pass_name=pass_name) as session:
        session.advance(step)
        with torch.inference_mode():
            return unet(sample, timestep, encoder_hidden_states=context).sample


def _residuals(control: SimpleNamespace, image: Image.Image, scales: list[float]) -> dict[str, object]:
    sample, timestep, context = _inputs()
    unit = ControlUnitInput(control=control, image=image)
    hint = unit.hint(16, 16, sample.device, sample.dtype).expand(sample.shape[0], -1, -1, -1)
    with torch.inference_mode():
        down, mid = control.model(
            sample, timestep, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False
        )
    return {"down": [d * s for d, s in zip(down, scales[:-1], strict=True)], "mid": mid * scales[-1]}


def test_balanced_unit_equals_direct_residuals(unet: torch.nn.Module, controls: tuple) -> None:
    image = _image(1)
    got = _controlled(unet, [ControlUnitInput(control=controls[0], image=image, weight=0.7)])
    direct = _residuals(controls[0], image, [0.7] * 7)
    expected = _plain(
        unet, down_block_additional_residuals=direct["down"], mid_block_additional_residual=direct["mid"]
    )
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, _plain(unet), atol=1e-3)  # the control does change the prediction


@pytest.mark.parametrize("change", [{"weight": 0.0}, {"guidance_end": 0.0}, {"guidance_start": 0.5}])
def test_inactive_unit_is_bitwise_no_op(unet: torch.nn.Module, controls: tuple, change: dict) -> None:
    unit = ControlUnitInput(control=controls[0], image=_image(1), **change)
    assert torch.equal(_controlled(unet, [unit], step=0, total=4), _plain(unet))


def test_guidance_window_counts_steps_of_the_pass(unet: torch.nn.Module, controls: tuple) -> None:
    unit = ControlUnitInput(control=controls[0], image=_image(1), guidance_start=0.25, guidance_end=0.75)
    active = [unit.active_at(step, 4) for step in range(4)]
    assert active == [False, True, True, False]
    plain = _plain(unet)
    assert torch.equal(_controlled(unet, [unit], step=0), plain)
    assert not torch.equal(_controlled(unet, [unit], step=1), plain)
    assert torch.equal(_controlled(unet, [unit], step=3), plain)


def test_two_units_add_their_residuals(unet: torch.nn.Module, controls: tuple) -> None:
    a, b = _image(1), _image(2)
    got = _controlled(
        unet,
        [
            ControlUnitInput(control=controls[0], image=a, weight=1.0),
            ControlUnitInput(control=controls[1], image=b, weight=0.5),
        ],
    )
    first = _residuals(controls[0], a, [1.0] * 7)
    second = _residuals(controls[1], b, [0.5] * 7)
    down = [x + y for x, y in zip(first["down"], second["down"], strict=True)]  # type: ignore[call-overload]
    expected = _plain(
        unet, down_block_additional_residuals=down, mid_block_additional_residual=first["mid"] + second["mid"]
    )  # type: ignore[operator]
    assert torch.allclose(got, expected, atol=1e-5)


def test_controlnet_is_more_important_leaves_unconditional_half_alone(
    unet: torch.nn.Module, controls: tuple
) -> None:
    unit = ControlUnitInput(control=controls[0], image=_image(1), control_mode=MODE_CONTROL)
    got = _controlled(unet, [unit])
    plain = _plain(unet)
    assert torch.equal(got[:BATCH], plain[:BATCH])  # [uncond, cond]: control only on the conditional half
    assert not torch.allclose(got[BATCH:], plain[BATCH:], atol=1e-3)


def test_soft_scales_follow_the_extension() -> None:
    unit = ControlUnitInput(control=SimpleNamespace(kind="controlnet"), image=_image(1), weight=2.0)
    assert _block_scales(unit, 13, soft=False) == [2.0] * 13
    soft = _block_scales(unit, 13, soft=True)
    assert soft[-1] == 2.0 and soft[0] == pytest.approx(2.0 * 0.825**12)
    assert soft == sorted(soft)
    adapter = ControlUnitInput(control=SimpleNamespace(kind="t2i_adapter"), image=_image(1))
    assert _block_scales(adapter, 4, soft=True) == [0.25, 0.62, 0.825, 1.0]


def test_prompt_mode_and_hires_pass_use_soft_weights(unet: torch.nn.Module, controls: tuple) -> None:
    image = _image(1)
    soft = _block_scales(ControlUnitInput(control=controls[0], image=image), 7, soft=True)
    direct = _residuals(controls[0], image, soft)
    expected = _plain(
        unet, down_block_additional_residuals=direct["down"], mid_block_additional_residual=direct["mid"]
    )
    prompt_mode = _controlled(
        unet, [ControlUnitInput(control=controls[0], image=image, control_mode=MODE_PROMPT)]
    )
    hires_pass = _controlled(unet, [ControlUnitInput(control=controls[0], image=image)], pass_name="high")
    assert torch.allclose(prompt_mode, expected, atol=1e-5)
    assert torch.allclose(hires_pass, expected, atol=1e-5)


def test_hires_option_picks_passes(controls: tuple) -> None:
    low = ControlUnitInput(control=controls[0], image=_image(1), hr_option="Low res only")
    high = ControlUnitInput(control=controls[0], image=_image(1), hr_option="High res only")
    assert low.acts_in("low") and not low.acts_in("high") and low.acts_in("single")
    assert high.acts_in("high") and not high.acts_in("low") and high.acts_in("single")


def test_hook_is_removed_after_an_error(unet: torch.nn.Module, controls: tuple) -> None:
    unit = ControlUnitInput(control=controls[0], image=_image(1))
    before = _plain(unet)
    with (
        pytest.raises(RuntimeError, match="stop"),
        ControlPlan([unit]).session(unet, batch=BATCH, total_steps=4),
    ):
        assert not torch.equal(_plain(unet), before)  # controlled while the session is open
        raise RuntimeError("stop")
    assert not unet._forward_pre_hooks
    assert torch.equal(_plain(unet), before)


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("Just Resize", lambda im: im.getpixel((0, 0)) != (0, 0, 0)),
        ("Crop and Resize", lambda im: im.getpixel((0, 0)) != (0, 0, 0)),
        (
            "Resize and Fill",
            lambda im: im.getpixel((0, 0)) == (0, 0, 0) and im.getpixel((32, 16)) != (0, 0, 0),
        ),
    ],
)
def test_fit_control_image_modes(mode: str, check: object) -> None:
    wide = Image.new("RGB", (40, 20), (200, 100, 50))
    fitted = fit_control_image(wide, 64, 64, mode)
    assert fitted.size == (64, 64)
    assert check(fitted)  # type: ignore[operator]


def test_t2i_adapter_features_are_added_inside_the_down_blocks(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    from tests.fixtures.controlnet_files import tiny_t2i_adapter, write_folder

    torch.manual_seed(5)
    # SD's block order (attention blocks first, a plain last block), which T2I-Adapters are made for
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
    ).eval()  # fmt: skip
    from webui.registry.controlnet import scan_controlnets
    from webui.runtime.controlnet.models import load_controlnet

    write_folder(tiny_t2i_adapter(), tmp_path / "adapter")
    record = next(iter(scan_controlnets(tmp_path)))
    adapter = load_controlnet(record, torch.float32)
    assert str(adapter.kind) == "t2i_adapter"
    image = _image(3)
    unit = ControlUnitInput(control=adapter, image=image, weight=0.8)
    got = _controlled(unet, [unit])
    sample, _, _ = _inputs()
    size = sample.shape[-1] * adapter.downscale
    hint = ControlUnitInput(control=adapter, image=image).hint(size, size, sample.device, sample.dtype)
    with torch.inference_mode():
        features = [f.expand(sample.shape[0], *f.shape[1:]) * 0.8 for f in adapter.model(hint)]
    expected = _plain(unet, down_intrablock_additional_residuals=features)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, _plain(unet), atol=1e-3)
