"""The Stable Diffusion x4 upscaler (diffusers ``StableDiffusionUpscalePipeline``) as a pixel upscaler.

Loaded offline, from a diffusers folder (``local_files_only``) or from the original single file
(``x4-upscaler-ema.safetensors`` / ``.ckpt``, LDM layout). A single file is read the way Easel reads
checkpoints (``webui.runtime.loader``): the release's configs are bundled under ``configs/sd-x4`` and
sized from the file's tensor shapes, each part is converted by diffusers' LDM converters straight into an
empty model, and the tokenizer is Easel's offline CLIP tokenizer (padded with ``!``, as in the release).
It runs with an empty prompt and no classifier-free guidance (an empty prompt against an empty negative
prompt adds nothing), a fixed seed so the same image always upscales the same way, ``noise_level`` 20
(the pipeline's default) and ``STEPS`` denoising steps. Like the model upscalers it works in tiles with a
margin of context that is cut off afterwards, so memory is bounded by the tile, not the image. Each tile
is padded to a multiple of 8 pixels (the UNet's latent grid) by repeating its edge pixels.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.runtime.tokenizer import SD2_PAD_TOKEN, clip_tokenizer
from webui.runtime.upscalers import UpscalerError

log = logging.getLogger(__name__)

STEPS = 20
NOISE_LEVEL = 20
SEED = 0
TILE = 128  # input pixels per tile side: 512-pixel output tiles, the size the model was trained at
MARGIN = 16
SCALE = 4


def load_pipeline(path: Path, device: torch.device, dtype: torch.dtype, tokenizer_cache: Path) -> Any:
    """The pipeline of the diffusers folder or single file at ``path``, on ``device``.

    ``tokenizer_cache``: where the CLIP tokenizer files live (Easel's cache; a single file needs them).
    """
    from diffusers import StableDiffusionUpscalePipeline

    try:
        if path.is_dir():
            pipe = StableDiffusionUpscalePipeline.from_pretrained(
                str(path), local_files_only=True, torch_dtype=dtype
            )
        else:
            pipe = load_single_file(path, dtype, tokenizer_cache)
    except UpscalerError:
        raise
    except Exception as exc:
        raise UpscalerError(
            f"Could not load the SD x4 upscaler {path.name}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
        ) from exc
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_single_file(path: Path, dtype: torch.dtype, tokenizer_cache: Path) -> Any:
    """The x4 upscaler of one LDM-layout file, on the CPU; every failure is an ``UpscalerError``."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    from webui.registry.architecture import (
        SD2_TE_PREFIX,
        UNET_PREFIX,
        VAE_PREFIX,
        UnknownArchitectureError,
        infer_sd_x4_configs,
    )
    from webui.registry.pickle_check import CheckpointLoadError
    from webui.registry.safetensors_header import SafetensorsError
    from webui.runtime.loader import (
        ModelLoadError,
        TensorSource,
        load_ldm_open_clip,
        load_ldm_unet,
        load_ldm_vae,
    )

    name = path.name
    source = TensorSource.for_file(path)
    try:
        configs = infer_sd_x4_configs(source.shapes(), name=name)
        unet = load_ldm_unet(source, UNET_PREFIX, configs.unet, dtype, f"{name} (UNet)")
        gc.collect()
        vae = load_ldm_vae(source, VAE_PREFIX, configs.vae, dtype, f"{name} (VAE)")
        text_encoder = load_ldm_open_clip(
            source, SD2_TE_PREFIX, configs.text_encoder, dtype, f"{name} (text encoder)"
        )
    except (SafetensorsError, CheckpointLoadError, UnknownArchitectureError, ModelLoadError) as exc:
        message = str(exc)  # what is wrong and what to do, mostly after the file name
        if not message.startswith(name):
            message = f"{name}: {message}"
        raise UpscalerError(f"Could not load the SD x4 upscaler {message}") from exc
    except KeyError as exc:
        raise UpscalerError(
            f"Could not load the SD x4 upscaler {name}: tensor {exc} is missing; the file is incomplete, "
            "download it again"
        ) from exc
    finally:
        gc.collect()
    return StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(tokenizer_cache, pad_token=SD2_PAD_TOKEN),
        unet=unet,
        low_res_scheduler=DDPMScheduler.from_config(configs.low_res_scheduler),
        scheduler=DDIMScheduler.from_config(configs.scheduler),
        max_noise_level=configs.max_noise_level,
    )


def _pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    height, width = array.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return array
    return np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _run_tile(pipe: Any, array: np.ndarray) -> np.ndarray:
    """Upscale one RGB uint8 tile ×4 (padded to a multiple of 8, cut back after)."""
    height, width = array.shape[:2]
    padded = _pad_to_multiple(array, 8)
    device = pipe.unet.device
    generator = torch.Generator("cpu").manual_seed(SEED)
    # Noise is drawn on the CPU so a tile upscales the same on every device.
    latent_h, latent_w = padded.shape[0], padded.shape[1]
    latents = torch.randn(
        (1, pipe.vae.config.latent_channels, latent_h, latent_w), generator=generator, dtype=torch.float32
    ).to(device, pipe.unet.dtype)
    with torch.inference_mode():
        output = pipe(
            prompt="",
            image=Image.fromarray(padded),
            num_inference_steps=STEPS,
            guidance_scale=1.0,
            noise_level=NOISE_LEVEL,
            generator=generator,
            latents=latents,
            output_type="np",
        )
    result = np.asarray(output.images[0])
    result = (np.clip(result, 0.0, 1.0) * 255).round().astype(np.uint8)
    return result[: height * SCALE, : width * SCALE]


def upscale_x4(pipe: Any, image: Image.Image, *, tile: int = TILE, margin: int = MARGIN) -> Image.Image:
    """``image`` four times larger, tile by tile."""
    source = np.asarray(image.convert("RGB"))
    height, width = source.shape[:2]
    out = np.empty((height * SCALE, width * SCALE, 3), dtype=np.uint8)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(height, top + tile), min(width, left + tile)
            y1, x1 = max(0, top - margin), max(0, left - margin)
            y2, x2 = min(height, bottom + margin), min(width, right + margin)
            result = _run_tile(pipe, source[y1:y2, x1:x2])
            core = result[
                (top - y1) * SCALE : (bottom - y1) * SCALE, (left - x1) * SCALE : (right - x1) * SCALE
            ]
            out[top * SCALE : bottom * SCALE, left * SCALE : right * SCALE] = core
    return Image.fromarray(out)
