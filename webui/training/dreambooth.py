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
    load_training_state,
    make_optimizer,
    run_steps,
    save_training_state,
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


def trained_modules(model: Any, config: DreamBoothConfig) -> dict[str, Any]:
    """The modules a run trains, by their diffusers component name (the UNet first)."""
    modules = {"unet": model.unet}
    if config.train_text_encoder:
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(model, name) is not None:
                modules[name] = getattr(model, name)
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
    warn: Callable[[str], None] = lambda text: None,
    state_file: Path | None = None,
    resume: bool = False,
) -> TrainingResult:
    """Fine-tune ``model`` on ``dataset`` and save it in fp16 in the base's form: a single-file base gives
    ``out_dir/<name>.safetensors`` in its LDM layout with every tensor training did not change; a diffusers
    folder gives the folder ``out_dir/<name>`` with its configs (which need not be the family's: a single
    LDM file could not carry them), tokenizers and untouched components copied.

    ``class_folder`` and ``draw`` are needed with prior preservation. The caller checks the memory first
    (:func:`memory_estimate`, :func:`check_memory`) while the model is still off the device.

    With ``state_file``, a stopped run writes its state there (the trained weights in fp32, the optimizer
    moments, the step and the random states: several times the checkpoint's size, so only when stopped);
    ``resume`` goes on from it, as if never stopped, and the finished run's checkpoint replaces the one its
    stop saved and the state file is removed."""
    from diffusers import DDPMScheduler

    from webui.runtime.loader import TensorSource
    from webui.training.checkpoint_file import trained_tensors, write_checkpoint, write_folder

    target = checked_target(config, model, out_dir, "DreamBooth", existing_allowed=True)  # checked below
    base_path = Path(str(getattr(model.record, "path", "")))
    folder_base = base_path.is_dir()
    if folder_base:
        target = Path(out_dir) / config.name
    elif not base_path.is_file():
        raise TrainingError(f"the base checkpoint {base_path} is gone; refresh the checkpoint list")
    for taken in (Path(out_dir) / config.name, Path(out_dir) / f"{config.name}.safetensors"):
        if taken.exists() and not (resume and taken == target):
            raise TrainingError(f"{taken.name} already exists in {taken.parent}; choose another name")
    if resume and (state_file is None or not state_file.is_file()):
        raise TrainingError("there is no saved state to resume from; start a new run")
    base = None if folder_base else TensorSource.for_file(base_path)
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
    parts = trained_modules(model, config)
    modules = list(parts.values())
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
        start = 0
        if resume and state_file is not None:
            status("Loading the saved training state")
            start, weights = load_training_state(state_file, set(parts), optimizer, rng, generator)
            for name, module in parts.items():
                module.load_state_dict(weights[name])
            del weights
        else:
            sample(0)
        status("Training")
        result = run_steps(
            model, model.unet, buckets, config, scheduler,
            encode=lambda captions: encoding(captions, device), optimizer=optimizer,
            base_rates=[group["lr"] for group in groups], rng=rng, generator=generator, on_step=on_step,
            on_eval=on_eval, sample=sample, grad_text=config.train_text_encoder, start=start,
            prior=(prior_buckets, config.prior_loss_weight) if prior_buckets else None,
        )  # fmt: skip
        if result.steps > start:
            status("Saving the checkpoint")
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
            if base is None:
                result.path = write_folder(base_path, parts, target, metadata, replace=resume)
            else:
                keys = set(base.shapes())
                replacements = trained_tensors(model, keys, text_encoder=config.train_text_encoder)
                result.path = write_checkpoint(base, replacements, target, metadata, replace=resume)
        if state_file is not None and result.stopped and result.steps > start:
            # after the checkpoint, which matters more when the disk is nearly full
            status("Saving the training state")
            weights = {name: module.state_dict() for name, module in parts.items()}
            problem = save_training_state(state_file, result.steps, weights, optimizer, rng, generator)
            if problem:
                warn(problem)
        elif resume and state_file is not None and not result.stopped:
            state_file.unlink(missing_ok=True)  # finished: gigabytes no run will read again
    finally:
        torch.set_rng_state(global_rng)
        if config.gradient_checkpointing and hasattr(model.unet, "disable_gradient_checkpointing"):
            model.unet.disable_gradient_checkpointing()
        for module, dtype in zip(modules, dtypes, strict=True):
            module.requires_grad_(False).eval().to(dtype)
    return result
