"""The training loop every method shares (LoRA, DreamBooth, textual inversion): settings, optimizers, the
learning-rate schedule, the dataset encoded once into latents at its aspect-ratio buckets, caption encoding,
and :func:`run_steps`, the denoising steps themselves.

Each step draws a batch from one bucket (weighted by kohya's repeats), adds noise at random timesteps and
learns to predict what the checkpoint's scheduler predicts (noise or, for v-models, velocity), weighted by
min-SNR γ when set. What is trained (adapters, the whole UNet, a token's vectors) is the caller's: it hands
the optimizer over the parameters it chose.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from webui.domain.models import ModelFamily
from webui.training.dataset import Dataset, bucket_for

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
EVAL_IMAGES = 8  # images in the eval set
EVAL_TIMESTEPS = (0.3, 0.6, 0.9)  # where each is noised, as fractions of the training timesteps
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
    eval_every: int = 0  # steps between eval-loss measurements (0: about ten over the run)

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
        if min(self.keep_tokens, self.sample_every, self.warmup_steps, self.eval_every) < 0:
            raise TrainingError(
                "keep tokens, warm-up steps and the sample and eval intervals cannot be negative"
            )
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
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss)


StepCallback = Callable[[int, int, float], bool]  # (step, total, loss) -> keep going
EvalCallback = Callable[[int, float], None]  # (step, eval loss on the fixed set)
SampleCallback = Callable[[int], None]  # (step): make sample images with the model as trained so far


def shuffled_caption(caption: str, keep_tokens: int, rng: random.Random) -> str:
    """``caption``'s comma-separated tags in a random order, the first ``keep_tokens`` kept in front."""
    tags = [tag.strip() for tag in caption.split(",") if tag.strip()]
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(rest)
    return ", ".join(kept + rest)


@dataclass
class Sample:
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
) -> dict[tuple[int, int], list[Sample]]:
    """Latents of every image (and its mirror image with ``flip``) at its bucket, by bucket."""
    scaling = float(vae.config.scaling_factor)
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    buckets: dict[tuple[int, int], list[Sample]] = {}
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
                Sample(latents.float().cpu(), item.caption, (item.height, item.width), crop, item.repeats)
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


class TextEncoding:
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


EVAL_SHARE = 0.1  # the most of the training's compute the automatic eval interval spends measuring


def eval_every(config: LoraTrainingConfig, forwards: int = EVAL_IMAGES * len(EVAL_TIMESTEPS)) -> int:
    """Steps between two evaluations of the eval loss: ``config.eval_every``, or about ten over the run,
    spaced further apart when that would cost more than :data:`EVAL_SHARE` of the training.

    One measurement is ``forwards`` UNet passes without gradients; a step is ``batch × accumulation``
    images, each a forward and a backward pass (about three forwards). Ten measurements of 24 images would
    be a third of a 60-step run at batch 4; spaced out, they stay near a tenth of it."""
    if config.eval_every:
        return config.eval_every
    per_step = 3 * config.batch_size * config.gradient_accumulation
    spacing = math.ceil(forwards / (EVAL_SHARE * per_step))
    return max(1, config.total_steps // 10, spacing)


def eval_set(
    buckets: dict[tuple[int, int], list[Sample]], scheduler: Any, seed: int
) -> list[tuple[tuple[int, int], list[Sample], torch.Tensor, torch.Tensor]]:
    """The fixed set the eval loss is measured on: :data:`EVAL_IMAGES` images spread evenly over the dataset
    (buckets in order), each at :data:`EVAL_TIMESTEPS` with noise drawn once from its own generator, so
    every evaluation sees the same inputs and the training's random draws are untouched.
    (bucket, images, noise, timesteps) per bucket."""
    generator = torch.Generator().manual_seed(seed + 1)
    last = scheduler.config.num_train_timesteps - 1
    everything = [(bucket, item) for bucket in sorted(buckets) for item in buckets[bucket]]
    count = min(EVAL_IMAGES, len(everything))
    chosen = [everything[index * len(everything) // count] for index in range(count)]
    out = []
    for bucket in sorted({bucket for bucket, _ in chosen}):
        images = [item for at, item in chosen if at == bucket]
        items = [item for item in images for _ in EVAL_TIMESTEPS]
        timesteps = torch.tensor([round(f * last) for _ in images for f in EVAL_TIMESTEPS])
        noise = torch.randn((len(items), *images[0].latents.shape), generator=generator)
        out.append((bucket, items, noise, timesteps))
    return out


def run_steps(
    model: Any,
    unet: Any,
    buckets: dict[tuple[int, int], list[Sample]],
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
    prior: tuple[dict[tuple[int, int], list[Sample]], float] | None = None,
    on_eval: EvalCallback | None = None,
) -> TrainingResult:
    """The denoising steps every method shares: draw a batch from a bucket (weighted by repeats), noise its
    latents at random timesteps, condition on its captions (``encode``; with ``grad_text`` its result keeps
    gradients), and step ``optimizer`` on the scheduler's target (noise, or velocity for v-models), min-SNR
    weighted. With ``prior`` (DreamBooth's prior preservation: class images and a weight), every batch of
    the dataset is followed by one of the class images, whose loss counts ``weight`` times. Raises
    :class:`TrainingError` at the first loss that is not finite.

    The eval loss (plain MSE on :func:`eval_set`, the same inputs every time) is measured before the first
    step, every :func:`eval_every` steps and at the last one, into ``result.eval_losses`` and ``on_eval``:
    unlike the training loss, whose random timesteps make it jump from step to step, it shows the trend."""
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

    def losses(
        bucket: tuple[int, int],
        batch: list[Sample],
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        captions: list[str],
        fresh: bool,
    ) -> torch.Tensor:
        """Each image's loss (mean squared error of the prediction) for ``batch`` noised with ``noise``."""
        latents = torch.stack([item.latents for item in batch]).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.set_grad_enabled(grad_text and torch.is_grad_enabled()):
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
        return F.mse_loss(prediction, wanted.float(), reduction="none").mean(dim=(1, 2, 3))

    def micro_batch(step: int, source: dict[tuple[int, int], list[Sample]]) -> torch.Tensor:
        """One batch's loss (a finite tensor with gradients; :class:`TrainingError` otherwise)."""
        keys = list(source)
        weights = [float(sum(item.repeats for item in items)) for items in source.values()]
        bucket = rng.choices(keys, weights=weights)[0]
        pool = source[bucket]
        batch = rng.choices(pool, weights=[item.repeats for item in pool], k=config.batch_size)
        noise = torch.randn((len(batch), *batch[0].latents.shape), generator=generator).to(device)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn(
                (len(batch), noise.shape[1], 1, 1), generator=generator
            ).to(device)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (len(batch),), generator=generator
        ).to(device)
        captions = [item.caption for item in batch]
        if config.shuffle_captions:
            captions = [shuffled_caption(caption, config.keep_tokens, rng) for caption in captions]
        fresh = grad_text or config.shuffle_captions  # shuffled captions rarely repeat: not kept
        per_item = losses(bucket, batch, noise, timesteps, captions, fresh)
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

    fixed = eval_set(buckets, scheduler, config.seed)
    every = eval_every(config, sum(len(items) for _, items, _, _ in fixed))

    def evaluate(step: int) -> None:
        total, count = 0.0, 0
        training = unet.training
        unet.eval()
        try:
            with torch.no_grad():
                for bucket, items, noise, timesteps in fixed:
                    for first in range(0, len(items), config.batch_size):  # no larger than a training batch
                        part = slice(first, first + config.batch_size)
                        captions = [item.caption for item in items[part]]
                        per_item = losses(
                            bucket, items[part], noise[part].to(device), timesteps[part].to(device), captions,
                            fresh=grad_text,
                        )  # fmt: skip
                        total += float(per_item.sum())
                        count += len(captions)
        finally:
            unet.train(training)
        value = total / max(1, count)
        result.eval_losses.append((step, value))
        if on_eval is not None:
            on_eval(step, value)

    accumulate = max(1, config.gradient_accumulation)
    result.steps = start
    if start == 0:
        evaluate(0)
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
        if not keep_going or step + 1 == config.total_steps or (step + 1) % every == 0:
            evaluate(step + 1)
        if config.sample_every and (
            not keep_going or step + 1 == config.total_steps or (step + 1) % config.sample_every == 0
        ):
            sample(step + 1)
        if not keep_going:
            result.stopped = True
            break
    return result


def save_training_state(
    path: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    generator: torch.Generator,
) -> str | None:
    """Write what a resumed run needs to go on as if it never stopped: the trained ``weights`` (part name ->
    state dict), the optimizer's state, the step, and the random states that decide the data order and the
    noise. Through a temp file renamed over ``path``.

    Returns ``None``, or why nothing was written (not enough disk space: a full fine-tune's state is its
    fp32 weights and optimizer moments, gigabytes; the run's result is saved all the same)."""
    optimizer_state = optimizer.state_dict()
    moments = [value for state in optimizer_state["state"].values() for value in state.values()]
    tensors = [t for part in weights.values() for t in part.values()] + [
        t for t in moments if isinstance(t, torch.Tensor)
    ]
    needed = sum(t.numel() * t.element_size() for t in tensors) + 2**20
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        return (
            f"the training state needs {needed / 2**30:.2f} GiB and {path.parent} has {free / 2**30:.2f} GiB "
            "free, so it was not kept and this run cannot resume"
        )
    state = {
        "step": step,
        "weights": weights,
        "optimizer": optimizer_state,
        "rng": json.dumps(rng.getstate()),
        "generator": generator.get_state(),
    }
    temp = path.with_suffix(".tmp")
    try:
        torch.save(state, temp)
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)
    return None


def load_training_state(
    path: Path,
    parts: set[str],
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    generator: torch.Generator,
) -> tuple[int, dict[str, dict[str, torch.Tensor]]]:
    """The step and trained weights :func:`save_training_state` wrote; the optimizer and random states are
    restored in place. :class:`TrainingError` when the state trained other ``parts`` than this run."""
    if not path.is_file():
        raise TrainingError("there is no saved state to resume from; start a new run")
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state.get("weights", state.get("adapters"))  # "adapters": the name before DreamBooth resumed
    if set(weights) != parts:
        raise TrainingError(
            "the saved state trained other parts of the model (the text encoder setting changed); "
            "resume with the run's own settings"
        )
    optimizer.load_state_dict(state["optimizer"])
    version, internal, gauss = json.loads(state["rng"])
    rng.setstate((version, tuple(internal), gauss))
    generator.set_state(state["generator"])
    return int(state["step"]), weights
