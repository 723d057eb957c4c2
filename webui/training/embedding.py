"""Textual inversion: learn the vectors of a new word, saved as an A1111 embedding in ``models/embeddings``.

The checkpoint stays frozen; only ``vectors`` new token embeddings are trained (per text encoder: one set for
SD 1.x/2.x, ``clip_l`` and ``clip_g`` for SDXL), starting from the embeddings of ``init_text``. Captions
name the embedding by its file name, as prompts do (``a photo of my-cat``); a caption that does not is
given the name in front. The vectors reach the text encoder the way they do at generation (the token
embedding output at the name's positions is replaced), so what is trained is what Easel, A1111, Forge and
ComfyUI then use: ``<name>.safetensors`` holding ``emb_params`` ([vectors, width]) or ``clip_l``/``clip_g``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui.domain.models import ModelFamily
from webui.training.dataset import Dataset
from webui.training.lora import (
    LoraTrainingConfig,
    StepCallback,
    TrainingError,
    TrainingResult,
    checked_target,
    encode_dataset,
    make_optimizer,
    run_steps,
)


@dataclass
class EmbeddingTrainingConfig(LoraTrainingConfig):
    """The LoRA settings that apply (steps, batch, schedule, ...) plus the embedding's own.

    ``rank``, ``alpha`` and the text-encoder settings are not used."""

    vectors: int = 4  # A1111's "number of vectors per token"
    init_text: str = "*"
    learning_rate: float = 5e-3

    def check(self) -> None:
        super().check()
        if not 1 <= self.vectors <= 75:
            raise TrainingError(f"an embedding has 1 to 75 vectors (got {self.vectors})")


# (step, the vectors so far as per-encoder tables: the ``embeddings`` a ``DiffusionJob`` takes in ``extra``)
EmbeddingSampleCallback = Callable[[int, list[dict[str, torch.Tensor]]], None]


def _token_rows(tokenizer: Any, encoder: Any, text: str, count: int) -> torch.Tensor:
    """``count`` rows from the token embeddings of ``text`` (cycled; ``*`` when it has no tokens)."""
    ids = tokenizer(text or "*", add_special_tokens=False).input_ids
    ids = ids or tokenizer("*", add_special_tokens=False).input_ids
    table = encoder.get_input_embeddings().weight.detach()
    return torch.stack([table[ids[index % len(ids)]] for index in range(count)]).float().clone()


def _with_name(caption: str, name: str) -> str:
    return caption if name in caption else f"{name}, {caption}" if caption else name


def train_embedding(
    model: Any,
    dataset: Dataset,
    config: EmbeddingTrainingConfig,
    out_dir: Path,
    *,
    on_step: StepCallback | None = None,
    on_sample: EmbeddingSampleCallback | None = None,
) -> TrainingResult:
    """Train the embedding ``config.name`` on ``model``; write ``out_dir/<name>.safetensors``.

    ``on_step`` and the sample steps are as in :func:`webui.training.lora.train_lora`; ``on_sample(step,
    tables)`` gets the vectors as trained so far. A loss that is not finite raises :class:`TrainingError`
    and saves nothing; the checkpoint's weights are not changed."""
    from diffusers import DDPMScheduler

    from webui.metadata.image_io import save_new_file
    from webui.runtime.conditioning import build_chunks, substituted_embeddings

    target = checked_target(config, model, out_dir, "Training an embedding")
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    device = next(model.unet.parameters()).device
    buckets = encode_dataset(model.vae, dataset, config.resolution, flip=config.flip)
    for samples in buckets.values():
        for item in samples:
            item.caption = _with_name(item.caption, config.name)
    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    encoders = model.text_encoders
    tokenizers = model.tokenizers
    vectors = [
        torch.nn.Parameter(_token_rows(tokenizer, encoder, config.init_text, config.vectors).to(device))
        for tokenizer, encoder in zip(tokenizers, encoders, strict=True)
    ]
    optimizer = make_optimizer(config.optimizer, [{"params": vectors, "lr": config.learning_rate}])
    sdxl = model.family is ModelFamily.SDXL
    counts = {config.name: config.vectors}

    def encode(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden: list[torch.Tensor] = []
        pooled = None
        for index, (tokenizer, encoder) in enumerate(zip(tokenizers, encoders, strict=True)):
            chunks = [build_chunks(caption, tokenizer, counts)[0] for caption in captions]
            ids = torch.tensor([chunk.ids for chunk in chunks], dtype=torch.long, device=device)
            with substituted_embeddings(encoder, chunks, {config.name: vectors[index]}):
                output = encoder(input_ids=ids, output_hidden_states=True)
            hidden.append(output.hidden_states[-2] if sdxl else output.last_hidden_state)
            if sdxl and index == len(encoders) - 1:
                pooled = output.text_embeds
        return torch.cat(hidden, dim=-1), pooled

    def sample(step: int) -> None:
        if on_sample is None or not config.sample_every:
            return
        with torch.no_grad():
            on_sample(step, [{config.name: v.detach().clone()} for v in vectors])

    global_rng = torch.get_rng_state()
    model.unet.requires_grad_(False)
    for encoder in encoders:
        encoder.requires_grad_(False)
    try:
        sample(0)
        result = run_steps(
            model, model.unet, buckets, config, scheduler, encode=encode, optimizer=optimizer,
            base_rates=[config.learning_rate], rng=rng, generator=generator, on_step=on_step, sample=sample,
            grad_text=True,
        )  # fmt: skip
        if result.steps:
            from safetensors.torch import save as safetensors_bytes

            tensors = (
                {"clip_l": vectors[0].detach().float().cpu(), "clip_g": vectors[1].detach().float().cpu()}
                if sdxl
                else {"emb_params": vectors[0].detach().float().cpu()}
            )
            metadata = {
                "name": config.name,
                "step": str(result.steps),
                "sd_checkpoint": config.base_model_hash,
                "sd_checkpoint_name": str(getattr(model.record, "name", "")),
                "init_text": config.init_text,
                "trained_in": "Easel",
            }
            save_new_file(
                safetensors_bytes({k: t.contiguous() for k, t in tensors.items()}, metadata), target
            )
            result.path = target
    finally:
        torch.set_rng_state(global_rng)
    return result
