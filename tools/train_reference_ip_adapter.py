"""Train Easel's reference IP-Adapter: an image prompt for the reference model, on the CPU in minutes.

    .venv/bin/python -m tools.train_reference_ip_adapter [--out models] [--seed 20242] [--steps 800]

It learns the published IP-Adapter layout (a plain image projection to 4 image tokens and a key/value
projection per cross-attention layer) for the shipped reference Stable Diffusion model
(``models/Stable-diffusion/easel-reference``), reading pictures through the reference CLIP's vision tower
(``models/clip/easel-reference-clip``). The UNet, text encoder, VAE and CLIP stay frozen; the adapter
learns to reproduce a picture of the procedural shapes dataset (``tools/reference/shapes.py``) from its
own CLIP embedding, with captions that mostly leave out the colour (empty or shape only), so what the
picture adds — above all its colours — has to come through the image tokens. The key/value projections
start as copies of the UNet's text ones, as in the IP-Adapter paper; one picture in ten gets a zero
embedding, the unconditional input at sampling time.

Training uses diffusers' own IP-Adapter attention (``UNet2DConditionModel._load_ip_adapter_weights``);
Easel applies the result with its hooks (``webui.runtime.controlnet.ip_adapter``), which compute the same.

Result: ``<out>/ControlNet/easel-reference-ip-adapter.safetensors`` (float16; metadata ``image_encoder``
= ``clip/easel-reference-clip`` so Easel finds its encoder) and ``...ip-adapter.json`` beside it (steps,
losses, time, and the measured colour transfer).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from tools.reference.shapes import dataset, render
from tools.reference.stages import log
from tools.train_reference_models import (
    CaptionEncoder,
    encode_images,
    min_snr_weights,
    noise_scheduler,
    seed_everything,
    train_loop,
)

ROOT = Path(__file__).resolve().parent.parent
NAME = "easel-reference-ip-adapter"
REFERENCE_MODEL = ROOT / "models" / "Stable-diffusion" / "easel-reference"
REFERENCE_CLIP = ROOT / "models" / "clip" / "easel-reference-clip"
ENCODER_HINT = "clip/easel-reference-clip"
TOKENS = 4
IMAGE_DROPOUT = 0.1
MAX_BYTES = 3_000_000


def caption_without_colour(spec: Any, rng: np.random.Generator) -> str:
    roll = rng.random()
    if roll < 0.4:
        return ""
    if roll < 0.8:
        return f"a {spec.shape}"
    return spec.full_caption()


def load_reference() -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(REFERENCE_MODEL / "unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(REFERENCE_MODEL / "text_encoder", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(REFERENCE_MODEL / "vae", torch_dtype=torch.float32)
    for module in (unet, text_encoder, vae):
        module.eval().requires_grad_(False)
    return unet, text_encoder, vae


def initial_state(unet: Any, embed_dim: int) -> dict[str, dict[str, torch.Tensor]]:
    """A fresh adapter in the published layout: a small random projection, key/value copies of the text's."""
    from webui.runtime.controlnet.ip_adapter import cross_attention_layers

    cross = int(unet.config.cross_attention_dim)
    proj = torch.nn.Linear(embed_dim, TOKENS * cross)
    torch.nn.init.normal_(proj.weight, std=0.02)
    torch.nn.init.zeros_(proj.bias)
    image_proj = {
        "proj.weight": proj.weight.detach().clone(),
        "proj.bias": proj.bias.detach().clone(),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    ip_adapter = {}
    for index, layer in enumerate(cross_attention_layers(unet)):
        ip_adapter[f"{2 * index + 1}.to_k_ip.weight"] = layer.to_k.weight.detach().clone()
        ip_adapter[f"{2 * index + 1}.to_v_ip.weight"] = layer.to_v.weight.detach().clone()
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def exported_state(unet: Any) -> dict[str, torch.Tensor]:
    """The trained adapter back in the published flat layout (``image_proj.*``, ``ip_adapter.<n>.*``)."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    state = {
        "image_proj.proj.weight": projection.image_embeds.weight,
        "image_proj.proj.bias": projection.image_embeds.bias,
        "image_proj.norm.weight": projection.norm.weight,
        "image_proj.norm.bias": projection.norm.bias,
    }
    number = 1
    for name, processor in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            state[f"ip_adapter.{number}.to_k_ip.weight"] = processor.to_k_ip[0].weight
            state[f"ip_adapter.{number}.to_v_ip.weight"] = processor.to_v_ip[0].weight
            number += 2
    return {key: value.detach().to(torch.float16).contiguous() for key, value in state.items()}


def train(args: argparse.Namespace) -> dict[str, Any]:
    from webui.runtime.controlnet.ip_adapter import load_image_encoder

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    unet, text_encoder, vae = load_reference()
    encoder = load_image_encoder(REFERENCE_CLIP, torch.float32, "cpu")
    specs, _ = dataset(args.images, args.seed + 1)
    log(f"encoding {len(specs)} pictures (VAE and CLIP)")
    pictures = [render(spec) for spec in specs]
    mean, std = encode_images(vae, iter(pictures), len(pictures))
    from PIL import Image

    embeds = torch.cat(
        [encoder.encode([Image.fromarray(p)], hidden_states=False)[0] for p in pictures]
    )  # (N, projection)
    scaling = float(vae.config.scaling_factor)
    unet._load_ip_adapter_weights([initial_state(unet, embeds.shape[1])])
    params = list(unet.encoder_hid_proj.parameters())
    for name, processor in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            params += list(processor.parameters())
    for param in params:
        param.requires_grad_(True)
    scheduler, captions = noise_scheduler(), CaptionEncoder()

    def loss_fn(_step: int) -> torch.Tensor:
        index = rng.integers(len(specs), size=args.batch)
        picked = torch.from_numpy(index)
        latents = (mean[picked] + std[picked] * torch.randn_like(mean[picked])) * scaling
        image = embeds[picked] * torch.from_numpy(rng.random(args.batch) >= IMAGE_DROPOUT).float()[:, None]
        with torch.no_grad():
            ids = captions.ids([caption_without_colour(specs[i], rng) for i in index])
            context = text_encoder(input_ids=ids).last_hidden_state
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(
            noisy, timesteps, context, added_cond_kwargs={"image_embeds": [image[:, None]]}
        ).sample
        per_item = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        return (per_item * min_snr_weights(scheduler, timesteps)).mean()

    unet.train()
    stats = train_loop("ip-adapter", params, args.steps, args.lr, loss_fn)
    unet.eval()
    return {"stats": stats, "state": exported_state(unet)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models")
    parser.add_argument("--seed", type=int, default=20242)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    from safetensors.torch import save_file

    started = time.perf_counter()
    result = train(args)
    target = args.out / "ControlNet" / f"{NAME}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(result["state"], str(target), metadata={"image_encoder": ENCODER_HINT})
    size = target.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{target} is {size} bytes, over the {MAX_BYTES} budget")
    card = {
        "plan": {k: v for k, v in vars(args).items() if k != "out"},
        "training": {**result["stats"], "device": f"cpu ({torch.get_num_threads()} threads)"},
        "bytes": size,
        "seconds": round(time.perf_counter() - started),
    }
    log(f"wrote {target} ({size} bytes)")
    target.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
