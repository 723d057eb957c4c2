"""The GPU memory estimator and the automatic memory mode (``--memory-mode auto``).

Its activation figures are measured again here: each family's bundled architecture runs on PyTorch's
``meta`` device (shapes only, no arithmetic) while a dispatch mode adds up the bytes of the live tensors.
Its choices are checked against the memory figures users and the other front ends publish."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from webui.domain.memory_plan import (
    CONTROLNET_BYTES_PER_LATENT_PIXEL,
    GIB,
    UNET_BYTES_PER_LATENT_PIXEL,
    VAE_DECODE_BYTES_PER_PIXEL,
    JobShape,
    ModelParts,
    choose_mode,
    estimate,
)

CONFIGS = Path(__file__).resolve().parents[2] / "webui" / "runtime" / "configs"
MB = 10**6


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by the tensors ops have made and that are still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and not tensor._is_view():
                size = tensor.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


def _inputs(config: dict[str, Any], batch: int, latent: int) -> tuple[Any, ...]:
    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, dtype=torch.float16, device="meta")

    added: dict[str, Any] = {}
    if config.get("addition_embed_type") == "text_time":
        text = config["projection_class_embeddings_input_dim"] - 1280
        times = text // config["addition_time_embed_dim"]
        added = {"added_cond_kwargs": {"text_embeds": zeros(batch, 1280), "time_ids": zeros(batch, times)}}
    sample = zeros(batch, 4, latent, latent)
    timestep = torch.full((batch,), 500.0, device="meta")
    return sample, timestep, zeros(batch, 77, config["cross_attention_dim"]), added


def _unet_peak(folder: str, batch: int, latent: int, controlnet: bool = False) -> int:
    from diffusers import ControlNetModel, UNet2DConditionModel

    config = UNet2DConditionModel.load_config(CONFIGS / folder / "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).half()
        control = (
            ControlNetModel.from_config(ControlNetModel.load_config(CONFIGS / "controlnet" / folder)).half()
            if controlnet
            else None
        )
    sample, timestep, context, added = _inputs(config, batch, latent)
    meter = LiveBytes()
    with torch.inference_mode(), meter:
        residuals: dict[str, Any] = {}
        if control is not None:
            hint = torch.zeros(batch, 3, latent * 8, latent * 8, dtype=torch.float16, device="meta")
            down, mid = control(sample, timestep, context, controlnet_cond=hint, return_dict=False, **added)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        unet(sample, timestep, context, **added, **residuals)
    return meter.peak


@pytest.mark.parametrize(
    ("folder", "key", "size"),
    [("sd1", "sd1", 512), ("sd2", "sd2", 768), ("sdxl", "sdxl", 1024), ("sdxl-refiner", "sdxl-refiner", 768)],
)
def test_the_unet_activation_figures_match_the_bundled_architectures(
    folder: str, key: str, size: int
) -> None:
    latent = size // 8
    measured = _unet_peak(folder, 2, latent) / (2 * latent * latent)
    assert measured == pytest.approx(UNET_BYTES_PER_LATENT_PIXEL[key], rel=0.02)


@pytest.mark.parametrize(("folder", "size"), [("sd1", 512), ("sdxl", 1024)])
def test_a_controlnet_unit_adds_its_measured_share(folder: str, size: int) -> None:
    latent = size // 8
    added = (_unet_peak(folder, 2, latent, controlnet=True) - _unet_peak(folder, 2, latent)) / (2 * latent**2)
    assert added == pytest.approx(CONTROLNET_BYTES_PER_LATENT_PIXEL[folder], rel=0.05)


@pytest.mark.parametrize("size", [512, 1024])
def test_the_vae_decode_figure_matches_the_bundled_decoder(size: int) -> None:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS / "sdxl" / "vae")).half()
    meter = LiveBytes()
    with torch.inference_mode(), meter:
        vae.decode(torch.zeros(1, 4, size // 8, size // 8, dtype=torch.float16, device="meta"))
    assert meter.peak / size**2 == pytest.approx(VAE_DECODE_BYTES_PER_PIXEL, rel=0.02)


# Weight bytes in fp16: SD 1.5 (UNet 860 M parameters, CLIP ViT-L 123 M, VAE 84 M) and SDXL (UNet 2.57 B,
# CLIP ViT-L 123 M + OpenCLIP ViT-bigG 695 M, VAE 84 M).
SD15 = ModelParts(unet=1720 * MB, text_encoders=246 * MB, vae=167 * MB)
SDXL = ModelParts(unet=5135 * MB, text_encoders=1636 * MB, vae=167 * MB)


def _free(card_gb: float) -> int:
    return int((card_gb - 0.6) * GIB)  # the CUDA context and a desktop take about 0.6 GiB of a card


@pytest.mark.parametrize(
    ("parts", "family", "size", "batch", "card_gb", "mode", "fits"),
    [
        # SD 1.x at 512² runs whole on a 4 GB card with SDPA attention; 2 GB cards need --lowvram
        # (AUTOMATIC1111's README: "4GB video card support (also reports of 2GB working)").
        (SD15, "sd1", 512, 1, 4, "normal", True),
        (SD15, "sd1", 512, 8, 6, "normal", True),
        (SD15, "sd1", 512, 1, 2, "lowvram", True),
        # SDXL at 1024²: whole on 12 GB cards and up; on 8 GB, model parts in turn (A1111 1.6.0 added
        # --medvram-sdxl for 8 GB cards). On 4 GB even streamed weights leave too little for an fp32
        # decode of 1024² (3 GiB): the plan says it may not fit.
        (SDXL, "sdxl", 1024, 1, 24, "normal", True),
        (SDXL, "sdxl", 1024, 1, 12, "normal", True),
        (SDXL, "sdxl", 1024, 4, 12, "normal", True),
        (SDXL, "sdxl", 1024, 1, 8, "medvram", True),
        (SDXL, "sdxl", 1024, 1, 4, "lowvram", False),
    ],
)
def test_the_chosen_mode_agrees_with_published_card_sizes(
    parts: ModelParts, family: str, size: int, batch: int, card_gb: float, mode: str, fits: bool
) -> None:
    shape = JobShape(family, size, size, batch=batch, decode_bytes=4 if family == "sdxl" else 2)
    plan = choose_mode(estimate(parts, shape), _free(card_gb))
    assert (plan.mode, plan.fits) == (mode, fits)


def test_the_need_grows_with_size_batch_and_controlnets() -> None:
    base = estimate(SDXL, JobShape("sdxl", 1024, 1024))
    assert estimate(SDXL, JobShape("sdxl", 1536, 1536)).normal > base.normal
    assert estimate(SDXL, JobShape("sdxl", 1024, 1024, batch=8)).unet_activations == 8 * base.unet_activations
    assert (
        estimate(SDXL, JobShape("sdxl", 1024, 1024, cfg=False)).unet_activations * 2 == base.unet_activations
    )
    assert estimate(SDXL, JobShape("sdxl", 1024, 1024, controlnets=2)).medvram > base.medvram
    tiled = estimate(SDXL, JobShape("sdxl", 2048, 2048, decode_pixels=1536 * 1536))
    assert tiled.decode == VAE_DECODE_BYTES_PER_PIXEL * 1536 * 1536
    assert base.normal > base.medvram > base.lowvram


def test_the_ceiling_and_a_job_that_fits_nowhere() -> None:
    need = estimate(SD15, JobShape("sd1", 512, 512))
    assert choose_mode(need, 20 * GIB).mode == "normal"
    assert choose_mode(need, 20 * GIB, ceiling="medvram").mode == "medvram"  # after an out-of-memory step
    nowhere = choose_mode(need, 100 * 2**20)
    assert (nowhere.mode, nowhere.fits) == ("lowvram", False)
    assert "may not fit" in nowhere.line()
    line = choose_mode(estimate(SDXL, JobShape("sdxl", 1024, 1024)), _free(8)).line()
    assert line.startswith("Memory mode medvram: 1024×1024, batch 1 needs about")
    assert "7.4 GiB is free" in line


def test_the_memory_mode_flags() -> None:
    from webui.cli import settings_from_args
    from webui.runtime.cache import choose_device

    assert settings_from_args([]).memory_mode == "auto"
    assert settings_from_args(["--memory-mode", "normal"]).memory_mode == "normal"
    assert settings_from_args(["--medvram"]).memory_mode == "medvram"
    assert settings_from_args(["--lowvram", "--memory-mode", "normal"]).memory_mode == "lowvram"
    assert choose_device("cpu", "half", "sdpa", "auto").memory_mode == "normal"  # no modes off CUDA
