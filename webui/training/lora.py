"""Train a LoRA on a loaded checkpoint (SD 1.x, SD 2.x, SDXL) and save it in kohya's layout.

The checkpoint's weights stay frozen; peft adds low-rank adapters to kohya's targets (UNet attention,
``proj_in``/``proj_out`` and feed-forward; with ``train_text_encoder`` also the text encoders' attention and
MLP), and the shared loop (:mod:`webui.training.loop`) trains them. A stopped run saves its state (adapters,
optimizer, RNGs) so that a resumed run equals one that never stopped. The result is written to
``<name>.safetensors`` with kohya's metadata, so it appears in Easel's LoRA list (and A1111's, Forge's and
ComfyUI's) and is used as ``<lora:name:1>``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from webui.domain.models import ModelFamily
from webui.training.dataset import Dataset
from webui.training.kohya import lora_tensors, save_kohya_lora
from webui.training.loop import (
    KOHYA_BASE,
    EvalCallback,
    LoraTrainingConfig,
    SampleCallback,
    StepCallback,
    TextEncoding,
    TrainingError,
    TrainingResult,
    checked_target,
    encode_dataset,
    learning_rate_factor,
    load_training_state,
    make_optimizer,
    run_steps,
    save_training_state,
)
from webui.training.memory import UNET_LORA_TARGETS

__all__ = ["LoraTrainingConfig", "TrainingError", "TrainingResult", "learning_rate_factor", "train_lora"]

UNET_TARGETS = list(UNET_LORA_TARGETS)  # the layers the memory estimate counts are the ones adapted
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def train_lora(
    model: Any,
    dataset: Dataset,
    config: LoraTrainingConfig,
    out_dir: Path,
    *,
    on_step: StepCallback | None = None,
    on_eval: EvalCallback | None = None,
    on_sample: SampleCallback | None = None,
    state_file: Path | None = None,
    resume: bool = False,
    on_warning: Callable[[str], None] | None = None,
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
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

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
    encode = TextEncoding(model)

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
        start = 0
        if resume and state_file:
            start, weights = load_training_state(
                state_file, {name for name, _ in adapters}, optimizer, rng, generator
            )
            for name, wrapped in adapters:
                set_peft_model_state_dict(wrapped, weights[name])
        unet.train()
        if not start:
            sample(0)
        result = run_steps(
            model, unet, buckets, config, scheduler, encode=lambda captions: encode(captions, device),
            optimizer=optimizer, base_rates=base_rates, rng=rng, generator=generator, on_step=on_step,
            on_eval=on_eval, sample=sample, grad_text=config.train_text_encoder, start=start,
        )  # fmt: skip
        if state_file is not None and result.steps > start:
            weights = {name: get_peft_model_state_dict(wrapped) for name, wrapped in adapters}
            problem = save_training_state(state_file, result.steps, weights, optimizer, rng, generator)
            if problem and on_warning is not None:
                on_warning(problem)
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


def _sdxl_namer(model: Any) -> Callable[[str], str | None]:
    from webui.runtime.lora import ldm_namer

    return ldm_namer(model.unet)


def _text_model_path(path: str) -> str:
    """kohya names text-encoder modules from ``text_model.`` down, whichever object holds the encoder."""
    return path if path.startswith("text_model.") else f"text_model.{path}"
