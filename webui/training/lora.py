"""Train a LoRA on a loaded checkpoint (SD 1.x, SD 2.x, SDXL) and save it in kohya's layout.

The checkpoint's weights stay frozen; peft adds low-rank adapters to kohya's targets (UNet attention,
``proj_in``/``proj_out`` and feed-forward; with ``train_text_encoder`` also the text encoders' attention and
MLP). The images are encoded once into latents at their aspect-ratio buckets (``webui.training.dataset``);
each step draws a batch from one bucket, adds noise at random timesteps and learns to predict what the
checkpoint's scheduler predicts (noise or, for v-models, velocity), weighted by min-SNR γ when set. The
result is written to ``<name>.safetensors`` with kohya's metadata, so it appears in Easel's LoRA list
(and A1111's, Forge's and ComfyUI's) and is used as ``<lora:name:1>``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from webui.domain.models import ModelFamily
from webui.training.dataset import Dataset, bucket_for
from webui.training.kohya import lora_tensors, save_kohya_lora

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
KOHYA_BASE = {ModelFamily.SD1: "sd_v1", ModelFamily.SD2: "sd_v2", ModelFamily.SDXL: "sdxl_base_v1-0"}


OPTIMIZERS = ("AdamW", "AdamW8bit", "Adafactor")


def optimizer_problems() -> dict[str, str | None]:
    """Each optimizer → why it cannot be used here (``None``: usable). 8-bit AdamW needs bitsandbytes and
    a CUDA device; Adafactor comes with transformers."""
    problems: dict[str, str | None] = {"AdamW": None, "Adafactor": None, "AdamW8bit": None}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        problems["AdamW8bit"] = "needs the bitsandbytes package (pip install bitsandbytes) and a CUDA GPU"
    else:
        if not torch.cuda.is_available():
            problems["AdamW8bit"] = "needs a CUDA GPU"
    return problems


def make_optimizer(name: str, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    problem = optimizer_problems().get(name, f"unknown optimizer; choose one of {', '.join(OPTIMIZERS)}")
    if problem:
        raise TrainingError(f"the optimizer {name} cannot be used: {problem}")
    if name == "AdamW8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, weight_decay=1e-2)  # type: ignore[no-any-return]
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False)  # type: ignore[no-any-return]
    return torch.optim.AdamW(groups, weight_decay=1e-2)


class TrainingError(ValueError):
    """The training cannot run as configured; the message says what to change."""


@dataclass
class LoraTrainingConfig:
    name: str
    resolution: int = 512
    rank: int = 16
    alpha: float = 8.0
    total_steps: int = 1000
    batch_size: int = 1
    learning_rate: float = 1e-4
    text_encoder_learning_rate: float = 5e-5
    train_text_encoder: bool = False
    schedule: str = "constant_with_warmup"
    warmup_steps: int = 0
    seed: int = 0
    noise_offset: float = 0.0
    min_snr_gamma: float | None = 5.0
    flip: bool = False
    gradient_checkpointing: bool = False
    shuffle_captions: bool = (
        False  # kohya's shuffle_caption: the comma-separated tags in a new order each draw
    )
    keep_tokens: int = 0  # ... keeping this many leading tags (the trigger word) in place
    sample_every: int = 0  # call ``on_sample`` every this many steps (and before the first, and at the end)
    optimizer: str = "AdamW"
    base_model_hash: str = ""  # the checkpoint's short hash, written as ss_sd_model_hash
    gradient_accumulation: int = 1  # batches per optimizer step (their gradients averaged)

    def check(self) -> None:
        if not self.name or any(char in self.name for char in '/\\:*?"<>|') or self.name.startswith("."):
            raise TrainingError(
                f"the LoRA name {self.name!r} cannot be a file name; use letters, digits, - or _"
            )
        if self.rank < 1 or self.alpha <= 0:
            raise TrainingError(f"rank must be at least 1 and alpha above 0 (got {self.rank}, {self.alpha})")
        if self.resolution < 64 or self.resolution % 64:
            raise TrainingError(f"resolution must be a multiple of 64, at least 64 (got {self.resolution})")
        if self.total_steps < 1 or self.batch_size < 1 or self.gradient_accumulation < 1:
            raise TrainingError("total steps, batch size and gradient accumulation must be at least 1")
        if self.learning_rate <= 0:
            raise TrainingError(f"the learning rate must be above 0 (got {self.learning_rate})")
        if self.keep_tokens < 0 or self.sample_every < 0 or self.warmup_steps < 0:
            raise TrainingError("keep tokens, warm-up steps and the sample interval cannot be negative")
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")


@dataclass
class TrainingResult:
    path: Path | None  # None when stopped before the first step
    steps: int
    losses: list[float] = field(default_factory=list)
    stopped: bool = False


StepCallback = Callable[[int, int, float], bool]  # (step, total, loss) -> keep going
SampleCallback = Callable[[int], None]  # (step): make sample images with the model as trained so far


def shuffled_caption(caption: str, keep_tokens: int, rng: random.Random) -> str:
    """``caption``'s comma-separated tags in a random order, the first ``keep_tokens`` kept in front."""
    tags = [tag.strip() for tag in caption.split(",") if tag.strip()]
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(rest)
    return ", ".join(kept + rest)


@dataclass
class _Sample:
    latents: torch.Tensor  # (4, h/8, w/8), scaled
    caption: str
    original_size: tuple[int, int]  # (height, width), SDXL's size conditioning
    crop: tuple[int, int]  # (top, left) in the resized image
    repeats: int  # kohya's folder repeats: how often the image is drawn relative to the others


def _fit(image: Image.Image, bucket: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """``image`` resized to cover ``bucket`` (keeping its aspect ratio) and centre-cropped to it."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height)), (top, left)


@torch.no_grad()
def encode_dataset(
    vae: Any, dataset: Dataset, resolution: int, *, flip: bool = False
) -> dict[tuple[int, int], list[_Sample]]:
    """Latents of every image (and its mirror image with ``flip``) at its bucket, by bucket."""
    scaling = float(vae.config.scaling_factor)
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    buckets: dict[tuple[int, int], list[_Sample]] = {}
    for item in dataset.images:
        bucket = bucket_for(item.width, item.height, resolution)
        with Image.open(item.path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        fitted, crop = _fit(image, bucket)
        variants = [fitted, ImageOps.mirror(fitted)] if flip else [fitted]
        for variant in variants:
            pixels = torch.from_numpy(_array(variant)).permute(2, 0, 1)[None].to(device, dtype)
            latents = vae.encode(pixels * 2 - 1).latent_dist.mean[0] * scaling
            buckets.setdefault(bucket, []).append(
                _Sample(latents.float().cpu(), item.caption, (item.height, item.width), crop, item.repeats)
            )
    return buckets


def _array(image: Image.Image) -> Any:
    import numpy as np

    return np.asarray(image, dtype=np.float32) / 255.0


def _min_snr_weights(
    scheduler: Any, timesteps: torch.Tensor, gamma: float, v_prediction: bool
) -> torch.Tensor:
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=gamma) / snr
    return weight * snr / (snr + 1) if v_prediction else weight


def learning_rate_factor(config: LoraTrainingConfig, step: int) -> float:
    """The schedule's factor at ``step`` (0-based) times 1: warm-up is linear from 0."""
    if config.schedule != "constant" and config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule in ("constant", "constant_with_warmup"):
        return 1.0
    span = max(1, config.total_steps - config.warmup_steps)
    progress = min(1.0, max(0.0, (step - config.warmup_steps) / span))
    if config.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class _TextEncoding:
    """Captions → what the UNet is conditioned on, for one family."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.sdxl = model.family is ModelFamily.SDXL

    def _ids(self, tokenizer: Any, captions: list[str], device: torch.device) -> torch.Tensor:
        return tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)

    def __call__(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = self.model
        if not self.sdxl:
            hidden = model.text_encoder(self._ids(model.tokenizer, captions, device)).last_hidden_state
            return hidden, None
        first = model.text_encoder(self._ids(model.tokenizer, captions, device), output_hidden_states=True)
        second = model.text_encoder_2(
            self._ids(model.tokenizer_2, captions, device), output_hidden_states=True
        )
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return hidden, second.text_embeds


def checked_target(
    config: LoraTrainingConfig, model: Any, out_dir: Path, what: str, *, existing_allowed: bool = False
) -> Path:
    """The file a run will write, once the settings, the optimizer and the model's family are usable and
    the name is free (:class:`TrainingError` saying what to change otherwise)."""
    config.check()
    problem = optimizer_problems()[config.optimizer]
    if problem:
        raise TrainingError(f"the optimizer {config.optimizer} cannot be used: {problem}")
    if model.family not in KOHYA_BASE:
        raise TrainingError(f"{what} needs an SD 1.x, SD 2.x or SDXL checkpoint, not {model.family.value}")
    target = Path(out_dir) / f"{config.name}.safetensors"
    if target.exists() and not existing_allowed:
        raise TrainingError(f"{target.name} already exists in {target.parent}; choose another name")
    return target


def train_lora(
    model: Any,
    dataset: Dataset,
    config: LoraTrainingConfig,
    out_dir: Path,
    *,
    on_step: StepCallback | None = None,
    on_sample: SampleCallback | None = None,
    state_file: Path | None = None,
    resume: bool = False,
) -> TrainingResult:
    """Train ``config.name`` on ``model`` (a ``webui.runtime.loader.LoadedModel``); write it to ``out_dir``.

    With ``state_file``, the training state (the adapters, the optimizer, the step, and the random states
    that decide the data order and the noise) is written there when the training stops or ends; ``resume``
    reads it back and goes on from that step, so that a stopped and resumed run equals one that was not
    stopped. A resumed run replaces the file its stop saved.

    ``on_step(step, total, loss)`` is called after each step; returning False stops the training, and what
    was learnt so far is saved. With ``config.sample_every``, ``on_sample(step)`` is called before the first
    step (the baseline: the adapters start at zero, so it is the checkpoint's own image), every that many
    steps and after the last, while the adapters are active on ``model``. A loss that is not finite stops
    the training with :class:`TrainingError` and saves nothing. The model's own weights are unchanged
    afterwards (the adapters are removed).
    """
    from diffusers import DDPMScheduler
    from peft import LoraConfig, get_peft_model

    target = checked_target(config, model, out_dir, "LoRA training", existing_allowed=resume)
    if resume and (state_file is None or not state_file.is_file()):
        raise TrainingError("there is no saved state to resume from; start a new run")
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    global_rng = torch.get_rng_state()  # seeded for the adapters' initial weights, given back afterwards
    torch.manual_seed(config.seed)

    device = next(model.unet.parameters()).device
    buckets = encode_dataset(model.vae, dataset, config.resolution, flip=config.flip)
    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    v_prediction = scheduler.config.get("prediction_type") == "v_prediction"  # written in the metadata

    adapters: list[tuple[str, Any]] = []
    unet = get_peft_model(
        model.unet, LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=UNET_TARGETS)
    )
    adapters.append(("unet", unet))
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": config.learning_rate}]
    encoders = [("text_encoder", "lora_te1" if model.family is ModelFamily.SDXL else "lora_te")]
    if model.family is ModelFamily.SDXL:
        encoders.append(("text_encoder_2", "lora_te2"))
    if config.train_text_encoder:
        for attribute, _prefix in encoders:
            wrapped = get_peft_model(
                getattr(model, attribute),
                LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=TEXT_ENCODER_TARGETS),
            )
            adapters.append((attribute, wrapped))
            groups.append(
                {
                    "params": [p for p in wrapped.parameters() if p.requires_grad],
                    "lr": config.text_encoder_learning_rate,
                }
            )
    if config.gradient_checkpointing and hasattr(model.unet, "enable_gradient_checkpointing"):
        model.unet.enable_gradient_checkpointing()
    optimizer = make_optimizer(config.optimizer, groups)
    base_rates = [group["lr"] for group in groups]
    encode = _TextEncoding(model)

    def sample(step: int) -> None:
        if on_sample is None or not config.sample_every:
            return
        unet.eval()
        try:
            with torch.no_grad():
                on_sample(step)
        finally:
            unet.train()

    try:
        start = _load_state(state_file, adapters, optimizer, rng, generator) if resume and state_file else 0
        unet.train()
        if not start:
            sample(0)
        result = run_steps(
            model, unet, buckets, config, scheduler, encode=lambda captions: encode(captions, device),
            optimizer=optimizer, base_rates=base_rates, rng=rng, generator=generator, on_step=on_step,
            sample=sample, grad_text=config.train_text_encoder, start=start,
        )  # fmt: skip
        if state_file is not None and result.steps > start:
            _save_state(state_file, result.steps, adapters, optimizer, rng, generator)
        if result.steps > start:
            tensors: dict[str, torch.Tensor] = {}
            for attribute, wrapped in adapters:
                if attribute == "unet":
                    rename = _sdxl_namer(model) if model.family is ModelFamily.SDXL else None
                    tensors.update(lora_tensors(wrapped, "lora_unet", config.alpha, rename))
                else:
                    prefix = dict(encoders)[attribute]
                    tensors.update(lora_tensors(wrapped, prefix, config.alpha, _text_model_path))
            if resume and target.exists():
                target.unlink()  # the file this run's stop saved; the resumed run's replaces it
            save_kohya_lora(
                target,
                tensors,
                rank=config.rank,
                alpha=config.alpha,
                output_name=config.name,
                captions=[image.caption for image in dataset.images],
                base_model_version=KOHYA_BASE[model.family],
                dataset_name=config.name,
                v_prediction=v_prediction,
                resolution=config.resolution,
                extra={
                    "ss_network_args": json.dumps({"train_text_encoder": config.train_text_encoder}),
                    "ss_sd_model_hash": config.base_model_hash,
                    "ss_text_encoder_lr": str(
                        config.text_encoder_learning_rate if config.train_text_encoder else 0
                    ),
                    "ss_unet_lr": str(config.learning_rate),
                    "ss_lr_scheduler": config.schedule,
                    "ss_lr_warmup_steps": str(config.warmup_steps),
                    "ss_min_snr_gamma": str(config.min_snr_gamma or 0),
                    "ss_noise_offset": str(config.noise_offset),
                    "ss_batch_size_per_device": str(config.batch_size),
                    "ss_gradient_accumulation_steps": str(config.gradient_accumulation),
                    "ss_shuffle_caption": str(config.shuffle_captions),
                    "ss_keep_tokens": str(config.keep_tokens),
                    "ss_flip_aug": str(config.flip),
                    "ss_optimizer": config.optimizer,
                    "ss_training_comment": "trained in Easel",
                    "ss_max_train_steps": str(config.total_steps),
                    "ss_steps": str(result.steps),
                    "ss_learning_rate": str(config.learning_rate),
                    "ss_resolution": f"({config.resolution}, {config.resolution})",
                    "ss_seed": str(config.seed),
                    "ss_sd_model_name": str(getattr(model.record, "name", "")),
                },
            )
            result.path = target
    finally:
        torch.set_rng_state(global_rng)
        for attribute, wrapped in adapters:  # the loaded model is used for generation again afterwards
            setattr(model, attribute, wrapped.unload())
        if config.gradient_checkpointing and hasattr(model.unet, "disable_gradient_checkpointing"):
            model.unet.disable_gradient_checkpointing()
        model.unet.eval()
    return result


def _save_state(
    path: Path, step: int, adapters: list[tuple[str, Any]], optimizer: Any, rng: random.Random, generator: Any
) -> None:
    from peft import get_peft_model_state_dict

    state = {
        "step": step,
        "adapters": {name: get_peft_model_state_dict(wrapped) for name, wrapped in adapters},
        "optimizer": optimizer.state_dict(),
        "rng": json.dumps(rng.getstate()),
        "generator": generator.get_state(),
    }
    temp = path.with_suffix(".tmp")
    torch.save(state, temp)
    temp.replace(path)


def _load_state(
    path: Path, adapters: list[tuple[str, Any]], optimizer: Any, rng: random.Random, generator: Any
) -> int:
    from peft import set_peft_model_state_dict

    state = torch.load(path, map_location="cpu", weights_only=True)
    if set(state["adapters"]) != {name for name, _ in adapters}:
        raise TrainingError(
            "the saved state trained other parts of the model (the text encoder setting changed); "
            "resume with the run's own settings"
        )
    for name, wrapped in adapters:
        set_peft_model_state_dict(wrapped, state["adapters"][name])
    optimizer.load_state_dict(state["optimizer"])
    version, internal, gauss = json.loads(state["rng"])
    rng.setstate((version, tuple(internal), gauss))
    generator.set_state(state["generator"])
    return int(state["step"])


def _sdxl_namer(model: Any) -> Callable[[str], str | None]:
    from webui.runtime.lora import ldm_namer

    return ldm_namer(model.unet)


def _text_model_path(path: str) -> str:
    """kohya names text-encoder modules from ``text_model.`` down, whichever object holds the encoder."""
    return path if path.startswith("text_model.") else f"text_model.{path}"


def run_steps(
    model: Any,
    unet: Any,
    buckets: dict[tuple[int, int], list[_Sample]],
    config: LoraTrainingConfig,
    scheduler: Any,
    *,
    encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]],
    optimizer: torch.optim.Optimizer,
    base_rates: list[float],
    rng: random.Random,
    generator: torch.Generator,
    on_step: StepCallback | None,
    sample: Callable[[int], None],
    grad_text: bool,
    start: int = 0,
    prior: tuple[dict[tuple[int, int], list[_Sample]], float] | None = None,
) -> TrainingResult:
    """The denoising steps every method shares: draw a batch from a bucket (weighted by repeats), noise its
    latents at random timesteps, condition on its captions (``encode``; with ``grad_text`` its result keeps
    gradients), and step ``optimizer`` on the scheduler's target (noise, or velocity for v-models), min-SNR
    weighted. With ``prior`` (DreamBooth's prior preservation: class images and a weight), every batch of
    the dataset is followed by one of the class images, whose loss counts ``weight`` times. Raises
    :class:`TrainingError` at the first loss that is not finite."""
    device = next(unet.parameters()).device
    unet_dtype = next(model.unet.parameters()).dtype
    v_prediction = scheduler.config.get("prediction_type") == "v_prediction"
    result = TrainingResult(path=None, steps=0)
    # A frozen text encoder gives a caption the same output at every step: each caption is encoded once.
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def cached(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        missing = [caption for caption in dict.fromkeys(captions) if caption not in outputs]
        if missing:
            context, pooled = encode(missing)
            for index, caption in enumerate(missing):
                outputs[caption] = (
                    context[index : index + 1],
                    None if pooled is None else pooled[index : index + 1],
                )
        context = torch.cat([outputs[caption][0] for caption in captions])
        pooled_parts = [outputs[caption][1] for caption in captions]
        pooled = None if pooled_parts[0] is None else torch.cat([p for p in pooled_parts if p is not None])
        return context, pooled

    def micro_batch(step: int, source: dict[tuple[int, int], list[_Sample]]) -> torch.Tensor:
        """One batch's loss (a finite tensor with gradients; :class:`TrainingError` otherwise)."""
        keys = list(source)
        weights = [float(sum(item.repeats for item in items)) for items in source.values()]
        bucket = rng.choices(keys, weights=weights)[0]
        pool = source[bucket]
        batch = rng.choices(pool, weights=[item.repeats for item in pool], k=config.batch_size)
        latents = torch.stack([item.latents for item in batch]).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn(
                (len(batch), latents.shape[1], 1, 1), generator=generator
            ).to(device)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (len(batch),), generator=generator
        ).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        captions = [item.caption for item in batch]
        if config.shuffle_captions:
            captions = [shuffled_caption(caption, config.keep_tokens, rng) for caption in captions]
        with torch.set_grad_enabled(grad_text):
            fresh = grad_text or config.shuffle_captions  # shuffled captions rarely repeat: not kept
            context, pooled = encode(captions) if fresh else cached(captions)
        extra: dict[str, Any] = {}
        if pooled is not None:
            height, width = bucket[1], bucket[0]
            time_ids = torch.tensor(
                [[*item.original_size, *item.crop, height, width] for item in batch],
                dtype=context.dtype,
                device=device,
            )
            extra["added_cond_kwargs"] = {
                "text_embeds": pooled.to(unet_dtype),
                "time_ids": time_ids.to(unet_dtype),
            }
        prediction = unet(noisy.to(unet_dtype), timesteps, context.to(unet_dtype), **extra).sample.float()
        wanted = scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
        per_item = F.mse_loss(prediction, wanted.float(), reduction="none").mean(dim=(1, 2, 3))
        if config.min_snr_gamma:
            per_item = per_item * _min_snr_weights(scheduler, timesteps, config.min_snr_gamma, v_prediction)
        loss = per_item.mean()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(
                f"the loss became {value} at step {step + 1}, so the training stopped and nothing was "
                "saved. Lower the learning rate; if the model runs in fp16, train in bf16 or fp32 "
                "(--precision bf16 or full)."
            )
        return loss

    accumulate = max(1, config.gradient_accumulation)
    result.steps = start
    for step in range(start, config.total_steps):
        factor = learning_rate_factor(config, step)
        for group, rate in zip(optimizer.param_groups, base_rates, strict=True):
            group["lr"] = rate * factor
        optimizer.zero_grad(set_to_none=True)
        value = 0.0
        for _ in range(accumulate):  # one optimizer step over ``accumulate`` batches: their mean gradient
            loss = micro_batch(step, buckets)
            if prior is not None:
                loss = loss + prior[1] * micro_batch(step, prior[0])
            (loss / accumulate).backward()
            value += float(loss.detach()) / accumulate
        optimizer.step()
        result.losses.append(value)
        result.steps = step + 1
        keep_going = on_step is None or on_step(step + 1, config.total_steps, value)
        if config.sample_every and (
            not keep_going or step + 1 == config.total_steps or (step + 1) % config.sample_every == 0
        ):
            sample(step + 1)
        if not keep_going:
            result.stopped = True
            break
    return result
