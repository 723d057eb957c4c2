"""Train Easel's reference models (demo and test models) on the procedural shapes dataset, on the CPU.

    .venv/bin/python -m tools.train_reference_models [--out models] [--seed 20240] [--stages all]

Stages, each seeded from ``--seed`` and saved before the next starts (``--stages`` reruns some of them
from the saved results of the others, kept in ``--work``):

1. ``vae``: an AutoencoderKL with 4× downsampling (64×64 RGB → 4×16×16), its ``scaling_factor`` set to
   1 / std of its latents;
2. ``base``: a narrow CLIPTextModel (real 49408-token CLIP vocabulary) trained jointly with a small
   UNet2DConditionModel with cross-attention: ε-prediction, SD's scaled-linear betas, caption dropout so
   classifier-free guidance works;
3. ``controlnet``: a ControlNet (``ControlNetModel.from_unet``) conditioned on the shape's outline;
4. ``lora``: a LoRA on the UNet's attention and feed-forward layers that makes images grayscale, saved in
   the kohya format;
5. ``ship``: write the float16 folders and the LoRA below.

Results: ``<out>/Stable-diffusion/easel-reference/`` (diffusers folder), ``<out>/ControlNet/
easel-reference-edges/`` (diffusers ControlNet folder), ``<out>/Lora/easel-reference-grayscale.safetensors``
(kohya), all weights in float16. ``<out>/Stable-diffusion/easel-reference/training.json`` records the
steps, losses and times of the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from tools.reference.shapes import SIZE, ShapeSpec, dataset, edge_map, render
from tools.reference.stages import Record, log, run_stages
from webui.training.kohya import lora_tensors, save_kohya_lora

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "easel-reference"
CONTROLNET_NAME = "easel-reference-edges"
LORA_NAME = "easel-reference-grayscale"
CAPTION_DROPOUT = 0.12
LORA_RANK = 8
LORA_ALPHA = 8.0
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
SD1_SCHEDULER = ROOT / "webui" / "runtime" / "configs" / "sd1" / "scheduler" / "scheduler_config.json"
DEVICE = torch.device("cpu")  # set by --device


@dataclass
class Plan:
    """Step counts and sizes of one run (the defaults are the shipped models')."""

    seed: int = 20240
    vae_steps: int = 800
    vae_batch: int = 8
    base_images: int = 6000
    base_steps: int = 5000
    base_batch: int = 32
    controlnet_steps: int = 800
    controlnet_batch: int = 32
    lora_images: int = 1500
    lora_steps: int = 800
    lora_batch: int = 32


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images → float tensor in [-1, 1], NCHW, on the training device."""
    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().to(DEVICE)


def cosine_lr(base: float, step: int, total: int, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_loop(
    name: str,
    params: list[torch.nn.Parameter],
    steps: int,
    lr: float,
    loss_fn: Callable[[int], torch.Tensor],
) -> dict[str, Any]:
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    started = time.perf_counter()
    window: list[float] = []
    history: list[float] = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(lr, step, steps)
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        window.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == steps:
            mean = sum(window) / len(window)
            history.append(round(mean, 5))
            elapsed = time.perf_counter() - started
            log(f"{name} step {step + 1}/{steps} loss {mean:.4f} ({elapsed / (step + 1):.2f} s/step)")
            window = []
    return {
        "steps": steps,
        "lr": lr,
        "loss_every_50": history,
        "seconds": round(time.perf_counter() - started),
    }


# --------------------------------------------------------------------------------------------------------
# Models


def new_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=SIZE,
        mid_block_add_attention=False,
    )


def new_text_encoder() -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=64,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def new_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def noise_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )


class CaptionEncoder:
    """Token ids as Easel builds them for a plain prompt: BOS, the tokens, EOS, EOS padding to 77."""

    def __init__(self) -> None:
        from webui.runtime.tokenizer import clip_tokenizer

        self._tokenizer = clip_tokenizer(ROOT / "cache" / "clip-tokenizer")
        self._ids: dict[str, list[int]] = {}

    def ids(self, captions: list[str]) -> torch.Tensor:
        for caption in captions:
            if caption not in self._ids:
                self._ids[caption] = self._tokenizer(
                    caption, padding="max_length", max_length=77, truncation=True
                ).input_ids
        return torch.tensor([self._ids[c] for c in captions], dtype=torch.long, device=DEVICE)


def min_snr_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    alphas = scheduler.alphas_cumprod[timesteps.cpu()]
    snr = alphas / (1 - alphas)
    return (torch.clamp(snr, max=gamma) / snr).to(timesteps.device)


# --------------------------------------------------------------------------------------------------------
# Stages


def train_vae(plan: Plan, work: Path) -> dict[str, Any]:
    seed_everything(plan.seed + 1)
    rng = np.random.default_rng(plan.seed + 1)
    vae = new_vae().to(DEVICE)
    vae.train()
    from tools.reference.shapes import random_spec

    def loss_fn(_step: int) -> torch.Tensor:
        batch = to_tensor([render(random_spec(rng)) for _ in range(plan.vae_batch)])
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / (4 * 16 * 16)
        return F.l1_loss(recon, batch) + F.mse_loss(recon, batch) + 1e-4 * kl

    stats = train_loop("vae", list(vae.parameters()), plan.vae_steps, 1e-3, loss_fn)
    vae.eval()
    specs, _ = dataset(512, plan.seed + 11)
    with torch.no_grad():
        latents = torch.cat(
            [
                vae.encode(to_tensor([render(s) for s in specs[i : i + 64]])).latent_dist.sample()
                for i in range(0, len(specs), 64)
            ]
        )
        check = to_tensor([render(s) for s in specs[:64]])
        recon_error = float((vae.decode(vae.encode(check).latent_dist.mode()).sample - check).abs().mean())
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=round(scaling, 5))
    vae.cpu().save_pretrained(work / "vae")
    stats.update({"scaling_factor": round(scaling, 5), "reconstruction_l1": round(recon_error, 4)})
    log(f"vae: scaling_factor {scaling:.4f}, reconstruction L1 {recon_error:.4f}")
    return stats


def load_vae(work: Path) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(work / "vae").eval().requires_grad_(False).to(DEVICE)


def encode_images(vae: Any, images: Iterator[np.ndarray], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of each image (sampled from at every training step)."""
    means, stds = [], []
    buffer: list[np.ndarray] = []
    with torch.no_grad():
        for index, image in enumerate(images):
            buffer.append(image)
            if len(buffer) == 64 or index + 1 == count:
                dist = vae.encode(to_tensor(buffer)).latent_dist
                means.append(dist.mean.cpu())
                stds.append(dist.std.cpu())
                buffer = []
    return torch.cat(means), torch.cat(stds)


@dataclass
class LatentSet:
    specs: list[ShapeSpec]
    captions: list[str]
    mean: torch.Tensor
    std: torch.Tensor

    def batch(self, rng: np.random.Generator, size: int, scaling: float) -> tuple[np.ndarray, torch.Tensor]:
        index = rng.integers(len(self.specs), size=size)
        picked = torch.from_numpy(index)
        mean, std = self.mean[picked].to(DEVICE), self.std[picked].to(DEVICE)
        return index, (mean + std * torch.randn_like(mean)) * scaling


def base_latents(plan: Plan, work: Path, vae: Any) -> LatentSet:
    cache = work / "base_latents.pt"
    specs, captions = dataset(plan.base_images, plan.seed + 2)
    if cache.exists():
        mean, std = torch.load(cache)
    else:
        log(f"encoding {len(specs)} images")
        mean, std = encode_images(vae, (render(s) for s in specs), len(specs))
        torch.save((mean, std), cache)
    return LatentSet(specs, captions, mean, std)


def diffusion_loss(
    unet: Any,
    text_encoder: Any,
    scheduler: Any,
    latents: torch.Tensor,
    ids: torch.Tensor,
    controlnet: Any | None = None,
    control: torch.Tensor | None = None,
) -> torch.Tensor:
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=DEVICE)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    context = text_encoder(input_ids=ids).last_hidden_state
    extra: dict[str, Any] = {}
    if controlnet is not None:
        down, mid = controlnet(noisy, timesteps, context, controlnet_cond=control, return_dict=False)
        extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    prediction = unet(noisy, timesteps, context, **extra).sample
    per_item = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
    return (per_item * min_snr_weights(scheduler, timesteps)).mean()


def drop_captions(captions: list[str], rng: np.random.Generator, rate: float) -> list[str]:
    return ["" if rng.random() < rate else caption for caption in captions]


def train_base(plan: Plan, work: Path) -> dict[str, Any]:
    vae = load_vae(work)
    data = base_latents(plan, work, vae)
    scaling = float(vae.config.scaling_factor)
    seed_everything(plan.seed + 3)
    rng = np.random.default_rng(plan.seed + 3)
    unet, text_encoder = new_unet().to(DEVICE), new_text_encoder().to(DEVICE)
    scheduler, encoder = noise_scheduler(), CaptionEncoder()
    unet.train()
    text_encoder.train()

    def loss_fn(_step: int) -> torch.Tensor:
        index, latents = data.batch(rng, plan.base_batch, scaling)
        captions = drop_captions([data.captions[i] for i in index], rng, CAPTION_DROPOUT)
        return diffusion_loss(unet, text_encoder, scheduler, latents, encoder.ids(captions))

    params = list(unet.parameters()) + list(text_encoder.parameters())
    stats = train_loop("base", params, plan.base_steps, 1e-3, loss_fn)
    unet.cpu().save_pretrained(work / "unet")
    text_encoder.cpu().save_pretrained(work / "text_encoder")
    return stats


def load_base(work: Path) -> tuple[Any, Any]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(work / "unet").eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(work / "text_encoder").eval().requires_grad_(False)
    return unet.to(DEVICE), text_encoder.to(DEVICE)


def control_images(specs: list[ShapeSpec]) -> torch.Tensor:
    """Edge maps as the ControlNet pipeline feeds them: float in [0, 1], NCHW."""
    array = np.stack([edge_map(spec) for spec in specs]).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().to(DEVICE)


def train_controlnet(plan: Plan, work: Path) -> dict[str, Any]:
    from diffusers import ControlNetModel

    vae = load_vae(work)
    data = base_latents(plan, work, vae)
    scaling = float(vae.config.scaling_factor)
    unet, text_encoder = load_base(work)
    seed_everything(plan.seed + 4)
    rng = np.random.default_rng(plan.seed + 4)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64)).to(DEVICE)
    controlnet.train()
    scheduler, encoder = noise_scheduler(), CaptionEncoder()
    edges: dict[int, torch.Tensor] = {}

    def loss_fn(_step: int) -> torch.Tensor:
        index, latents = data.batch(rng, plan.controlnet_batch, scaling)
        for i in index:
            if int(i) not in edges:
                edges[int(i)] = control_images([data.specs[int(i)]])[0]
        control = torch.stack([edges[int(i)] for i in index])
        captions = drop_captions([data.captions[i] for i in index], rng, 0.3)
        with torch.no_grad():
            ids = encoder.ids(captions)
        return diffusion_loss(unet, text_encoder, scheduler, latents, ids, controlnet, control)

    stats = train_loop("controlnet", list(controlnet.parameters()), plan.controlnet_steps, 1e-3, loss_fn)
    controlnet.cpu().save_pretrained(work / "controlnet")
    return stats


def train_lora(plan: Plan, work: Path) -> tuple[dict[str, Any], Any, list[str]]:
    from peft import LoraConfig, get_peft_model

    vae = load_vae(work)
    scaling = float(vae.config.scaling_factor)
    unet, text_encoder = load_base(work)
    specs, captions = dataset(plan.lora_images, plan.seed + 5)
    cache = work / "lora_latents.pt"
    if cache.exists():
        mean, std = torch.load(cache)
    else:
        log(f"encoding {len(specs)} grayscale images")
        mean, std = encode_images(vae, (render(s, grayscale=True) for s in specs), len(specs))
        torch.save((mean, std), cache)
    data = LatentSet(specs, captions, mean, std)
    seed_everything(plan.seed + 6)
    rng = np.random.default_rng(plan.seed + 6)
    config = LoraConfig(
        r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS, init_lora_weights=True
    )
    lora_unet = get_peft_model(unet, config)
    scheduler, encoder = noise_scheduler(), CaptionEncoder()

    def loss_fn(_step: int) -> torch.Tensor:
        index, latents = data.batch(rng, plan.lora_batch, scaling)
        batch_captions = drop_captions([data.captions[i] for i in index], rng, CAPTION_DROPOUT)
        return diffusion_loss(lora_unet, text_encoder, scheduler, latents, encoder.ids(batch_captions))

    params = [p for p in lora_unet.parameters() if p.requires_grad]
    stats = train_loop("lora", params, plan.lora_steps, 5e-3, loss_fn)
    return stats, lora_unet, captions


# --------------------------------------------------------------------------------------------------------
# Shipping


def save_half(module: Any, folder: Path) -> None:
    module.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    module.to(torch.float32)
    # diffusers records where the weights were loaded from; a shipped config must not name this machine.
    config = folder / "config.json"
    data = json.loads(config.read_text())
    if data.pop("_name_or_path", None) is not None:
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# A1111's user-metadata keys plus Easel's defaults: the size it was trained at, the sampler, steps and CFG the
# tests measured it with (tests/integration/test_reference_model.py).
REFERENCE_SIDECAR = {
    "description": "Easel's reference model: one coloured circle, square or triangle on a plain background, "
    "64x64 (see models/README.md).",
    "sd version": "SD1",
    "notes": 'Trained at 64x64 only; prompts like "a red circle on a blue background".',
    "easel_defaults": {
        "width": 64,
        "height": 64,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "steps": 20,
        "cfg_scale": 7.0,
    },
}


def ship_base(work: Path, out: Path) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from webui.runtime.tokenizer import write_tokenizer_files

    target = out / "Stable-diffusion" / MODEL_NAME
    if target.exists():
        shutil.rmtree(target)
    vae = load_vae(work).cpu()
    unet, text_encoder = (module.cpu() for module in load_base(work))
    encoder = CaptionEncoder()
    # The model's own scheduler: SD 1.x's (Easel picks the sampler per request; the betas are the model's).
    scheduler_config = json.loads(SD1_SCHEDULER.read_text())
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=encoder._tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(target, safe_serialization=True, variant=None)
    for sub, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        shutil.rmtree(target / sub)
        save_half(module, target / sub)
    shutil.rmtree(target / "tokenizer")
    write_tokenizer_files(target / "tokenizer")
    (target / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2) + "\n")
    # The sidecar beside the folder: the settings the UI starts at when this model is chosen.
    sidecar = target.parent / f"{MODEL_NAME}.json"
    sidecar.write_text(json.dumps(REFERENCE_SIDECAR, indent=4, ensure_ascii=False) + "\n")
    return target


def ship_controlnet(work: Path, out: Path) -> Path:
    from diffusers import ControlNetModel

    target = out / "ControlNet" / CONTROLNET_NAME
    if target.exists():
        shutil.rmtree(target)
    save_half(ControlNetModel.from_pretrained(work / "controlnet"), target)
    return target


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    global DEVICE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="models folder to write into")
    parser.add_argument("--work", type=Path, default=ROOT / "cache" / "reference-training")
    parser.add_argument("--seed", type=int, default=Plan.seed)
    parser.add_argument("--stages", default="all", help="comma-separated: vae,base,controlnet,lora,ship")
    parser.add_argument("--device", default="cpu", help="cpu (the reference run) or cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the reference run uses 2)")
    parser.add_argument("--steps", type=int, default=0, help="run every stage for this many steps (timing)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    DEVICE = torch.device(args.device)
    plan = Plan(seed=args.seed)
    if args.steps:
        plan = Plan(
            seed=args.seed,
            vae_steps=args.steps,
            base_images=512,
            base_steps=args.steps,
            controlnet_steps=args.steps,
            lora_images=128,
            lora_steps=args.steps,
        )
    everything = ["vae", "base", "controlnet", "lora", "ship"]
    stages = everything if args.stages == "all" else args.stages.split(",")
    work: Path = args.work
    record = Record(plan=plan.__dict__)

    def lora() -> dict[str, Any]:
        stats, lora_unet, captions = train_lora(plan, work)
        save_kohya_lora(
            work / f"{LORA_NAME}.safetensors",
            lora_tensors(lora_unet, "lora_unet", LORA_ALPHA),
            rank=LORA_RANK,
            alpha=LORA_ALPHA,
            output_name=LORA_NAME,
            captions=captions,
            extra={"ss_training_comment": "Easel reference LoRA: grayscale style for the shapes model"},
        )
        return stats

    def ship() -> None:
        ship_base(work, args.out)
        ship_controlnet(work, args.out)
        lora_target = args.out / "Lora" / f"{LORA_NAME}.safetensors"
        lora_target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / f"{LORA_NAME}.safetensors", lora_target)

    handlers: dict[str, Any] = {
        "vae": lambda: train_vae(plan, work),
        "base": lambda: train_base(plan, work),
        "controlnet": lambda: train_controlnet(plan, work),
        "lora": lora,
        "ship": ship,
    }
    device = f"{DEVICE} ({torch.get_num_threads()} threads)" if DEVICE.type == "cpu" else str(DEVICE)
    run_stages(stages, handlers, work, record, device=device, resume=args.stages != "all")
    if "ship" in stages:
        sizes = {
            "Stable-diffusion/" + MODEL_NAME: folder_bytes(args.out / "Stable-diffusion" / MODEL_NAME),
            "ControlNet/" + CONTROLNET_NAME: folder_bytes(args.out / "ControlNet" / CONTROLNET_NAME),
            f"Lora/{LORA_NAME}.safetensors": folder_bytes(args.out / "Lora" / f"{LORA_NAME}.safetensors"),
        }
        summary = {**record.__dict__, "shipped_bytes": sizes}
        (args.out / "Stable-diffusion" / MODEL_NAME / "training.json").write_text(
            json.dumps(summary, indent=2)
        )
        log(f"shipped bytes {sizes}")


if __name__ == "__main__":
    main()
