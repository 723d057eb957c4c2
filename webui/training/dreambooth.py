"""DreamBooth: fine-tune the whole UNet (and, optionally, the text encoders) on a subject, saved as a new
single-file checkpoint in A1111's layout in ``models/Stable-diffusion``.

Prior preservation (the DreamBooth paper's remedy for a model that forgets its class): before training,
``class_images`` images of ``class_prompt`` are drawn by the checkpoint itself (kept in the run's folder and
reused by a later run there), and every batch of the subject is followed by a batch of them whose loss
counts ``prior_loss_weight`` times.

A full fine-tune keeps fp32 weights, their gradients and the optimizer's moments on the device: before
anything is loaded onto it, :func:`memory_estimate` is compared with what the device has free, and a run
that would not fit is refused with the numbers and what to change.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui.domain.models import ModelFamily
from webui.training.dataset import Dataset, TrainImage
from webui.training.loop import (
    EvalCallback,
    LoraTrainingConfig,
    StepCallback,
    TextEncoding,
    TrainingError,
    TrainingResult,
    checked_target,
    encode_dataset,
    make_optimizer,
    run_steps,
)
from webui.training.memory import MemoryEstimate, ModelSizes, does_not_fit, estimate


@dataclass
class DreamBoothConfig(LoraTrainingConfig):
    """The LoRA settings that apply (steps, batch, schedule, ...) plus DreamBooth's; ``rank`` and ``alpha``
    are not used. ``train_text_encoder`` trains the text encoder(s) with ``text_encoder_learning_rate``."""

    learning_rate: float = 2e-6
    prior_preservation: bool = False
    class_prompt: str = ""
    class_images: int = 50
    prior_loss_weight: float = 1.0

    def check(self) -> None:
        super().check()
        if self.prior_preservation:
            if not self.class_prompt.strip():
                raise TrainingError("prior preservation needs a class prompt (e.g. 'a photo of a dog')")
            if not 1 <= self.class_images <= 10_000:
                raise TrainingError(f"class images must be 1 to 10000 (got {self.class_images})")
            if self.prior_loss_weight <= 0:
                raise TrainingError("the prior loss weight must be above 0")


def module_size(module: Any) -> tuple[int, int]:
    """(parameters, bytes) of a module as loaded."""
    if module is None:
        return 0, 0
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def trained_modules(model: Any, config: DreamBoothConfig) -> list[Any]:
    modules = [model.unet]
    if config.train_text_encoder:
        modules += [m for m in (model.text_encoder, model.text_encoder_2) if m is not None]
    return modules


def memory_estimate(model: Any, config: DreamBoothConfig) -> MemoryEstimate:
    """What a DreamBooth run of ``config`` on ``model`` needs on its device, before any of it is there."""
    sizes = ModelSizes(
        unet=module_size(model.unet)[0],
        text_encoders=module_size(model.text_encoder)[0] + module_size(model.text_encoder_2)[0],
        vae=module_size(model.vae)[0],
    )
    return estimate(
        "dreambooth", sizes, resolution=config.resolution, batch_size=config.batch_size,
        optimizer=config.optimizer, gradient_checkpointing=config.gradient_checkpointing,
        train_text_encoder=config.train_text_encoder,
        weight_bytes=next(model.vae.parameters()).element_size(), sdxl=model.family is ModelFamily.SDXL,
    )  # fmt: skip


def check_memory(needed: MemoryEstimate, available: int | None, device: str) -> None:
    """:class:`TrainingError` when ``needed`` does not fit in ``available`` bytes (``None``: unknown)."""
    problem = does_not_fit("dreambooth", needed, available, device)
    if problem:
        raise TrainingError(problem)


ClassDrawer = Callable[[str, int], Any]  # (prompt, seed) -> a PIL image drawn by the checkpoint


def class_dataset(
    config: DreamBoothConfig, folder: Path, draw: ClassDrawer, status: Callable[[str], None]
) -> Dataset:
    """The class images for prior preservation: those already in ``folder``, plus new ones drawn until there
    are ``config.class_images`` (seeds ``config.seed`` + index, so a rerun draws the same ones)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images: list[TrainImage] = []
    for index in range(config.class_images):
        path = folder / f"class-{index:05d}.png"
        if not path.is_file():
            status(f"Drawing class images: {index + 1}/{config.class_images}")
            image = draw(config.class_prompt, config.seed + index)
            temp = path.with_suffix(".tmp")
            image.save(temp, format="PNG")
            temp.replace(path)
        with Image.open(path) as opened:
            width, height = opened.size
        images.append(TrainImage(path, config.class_prompt, 1, width, height))
    return Dataset(images=images, skipped=[])


def train_dreambooth(
    model: Any,
    dataset: Dataset,
    config: DreamBoothConfig,
    out_dir: Path,
    *,
    on_step: StepCallback | None = None,
    on_eval: EvalCallback | None = None,
    on_sample: Callable[[int], None] | None = None,
    class_folder: Path | None = None,
    draw: ClassDrawer | None = None,
    status: Callable[[str], None] = lambda text: None,
) -> TrainingResult:
    """Fine-tune ``model`` (loaded from a single-file checkpoint) on ``dataset``; write
    ``out_dir/<name>.safetensors`` in fp16: the base file's layout and every tensor training did not change.

    ``class_folder`` and ``draw`` are needed with prior preservation. The caller checks the memory first
    (:func:`memory_estimate`, :func:`check_memory`) while the model is still off the device."""
    from diffusers import DDPMScheduler

    from webui.runtime.loader import TensorSource
    from webui.training.checkpoint_file import trained_tensors, write_checkpoint

    target = checked_target(config, model, out_dir, "DreamBooth")
    base_path = Path(str(getattr(model.record, "path", "")))
    if not base_path.is_file():
        # A diffusers folder's configs (head counts, norm groups, the VAE's scaling, ...) need not be the
        # family's, and a single LDM file cannot say otherwise: its loaders infer them from the shapes.
        raise TrainingError(
            "DreamBooth saves a single-file checkpoint and starts from one: choose the .safetensors (or "
            ".ckpt) file of this checkpoint as the base, not its diffusers folder"
        )
    base = TensorSource.for_file(base_path)
    base_keys = set(base.shapes())
    prior_buckets = None
    if config.prior_preservation:
        if class_folder is None or draw is None:
            raise TrainingError(
                "prior preservation needs somewhere to keep the class images and a way to draw them"
            )
        with torch.no_grad():
            classes = class_dataset(config, class_folder, draw, status)
        status("Encoding the images")
        prior_buckets = encode_dataset(model.vae, classes, config.resolution, flip=config.flip)
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    buckets = encode_dataset(model.vae, dataset, config.resolution, flip=config.flip)
    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    modules = trained_modules(model, config)
    dtypes = [next(module.parameters()).dtype for module in modules]
    for module in modules:  # fp32 weights: updates of 2e-6 vanish in half precision
        module.float().requires_grad_(True).train()
    for module in (model.vae, model.text_encoder, model.text_encoder_2):
        if module is not None and not any(module is m for m in modules):
            module.requires_grad_(False)
    groups = [{"params": list(model.unet.parameters()), "lr": config.learning_rate}]
    for module in modules[1:]:
        groups.append({"params": list(module.parameters()), "lr": config.text_encoder_learning_rate})
    if config.gradient_checkpointing and hasattr(model.unet, "enable_gradient_checkpointing"):
        model.unet.enable_gradient_checkpointing()
    optimizer = make_optimizer(config.optimizer, groups)
    encoding = TextEncoding(model)
    device = next(model.unet.parameters()).device

    def sample(step: int) -> None:
        if on_sample is None or not config.sample_every:
            return
        model.unet.eval()
        try:
            with torch.no_grad():
                on_sample(step)
        finally:
            model.unet.train()

    global_rng = torch.get_rng_state()
    try:
        sample(0)
        status("Training")
        result = run_steps(
            model, model.unet, buckets, config, scheduler,
            encode=lambda captions: encoding(captions, device), optimizer=optimizer,
            base_rates=[group["lr"] for group in groups], rng=rng, generator=generator, on_step=on_step,
            on_eval=on_eval, sample=sample, grad_text=config.train_text_encoder,
            prior=(prior_buckets, config.prior_loss_weight) if prior_buckets else None,
        )  # fmt: skip
        if result.steps:
            status("Saving the checkpoint")
            replacements = trained_tensors(model, base_keys, text_encoder=config.train_text_encoder)
            metadata = {
                "modelspec.title": config.name,
                "modelspec.architecture": {
                    ModelFamily.SD1: "stable-diffusion-v1", ModelFamily.SD2: "stable-diffusion-v2-512",
                    ModelFamily.SDXL: "stable-diffusion-xl-v1-base",
                }.get(model.family, model.family.value),
                "easel.training": "dreambooth",
                "easel.base_model": str(getattr(model.record, "name", "")),
                "easel.base_model_hash": config.base_model_hash,
                "easel.steps": str(result.steps),
                "easel.prior_preservation": str(config.prior_preservation),
            }  # fmt: skip
            result.path = write_checkpoint(base, replacements, target, metadata)
    finally:
        torch.set_rng_state(global_rng)
        if config.gradient_checkpointing and hasattr(model.unet, "disable_gradient_checkpointing"):
            model.unet.disable_gradient_checkpointing()
        for module, dtype in zip(modules, dtypes, strict=True):
            module.requires_grad_(False).eval().to(dtype)
    return result
