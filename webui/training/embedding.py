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
from webui.training.loop import (
    EvalCallback,
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
    init_file: str = ""  # go on from this embedding file (its vectors and step count) instead of init_text

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


def starting_vectors(model: Any, text: str, count: int) -> list[torch.Tensor]:
    """A new embedding's vectors, one ``[count, width]`` table per text encoder, from the token embeddings
    of ``text`` (A1111's "initialization text"; cycled to fill ``count``)."""
    return [
        _token_rows(tokenizer, encoder, text, count)
        for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True)
    ]


def file_vectors(model: Any, path: Path) -> tuple[list[torch.Tensor], int]:
    """The vectors of an embedding file that fit ``model``'s text encoders, and the steps it was trained.

    :class:`TrainingError` when the file cannot be read or was made for another family."""
    from webui.runtime.embeddings import EmbeddingError, read_embedding_file

    try:
        embedding = read_embedding_file(path)
    except EmbeddingError as exc:
        raise TrainingError(str(exc)) from exc
    encoders = model.text_encoders
    tables = []
    for index, encoder in enumerate(encoders):
        width = int(encoder.get_input_embeddings().weight.shape[-1])
        table = embedding.for_encoder(index, len(encoders), width)
        if table is None:
            raise TrainingError(
                f"the embedding {path.name} does not fit {model.family.value} (its vectors are "
                f"{embedding.shape} wide, this checkpoint's text encoder takes {width}); train it on the "
                "checkpoint family it was made for"
            )
        tables.append(table.float().clone())
    step = embedding.step
    if step is None and path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("step", "")
        step = int(recorded) if recorded.isdigit() else None
    return tables, step or 0


def embedding_file_bytes(model: Any, tables: list[torch.Tensor], metadata: dict[str, str]) -> bytes:
    """An embedding in A1111's ``.safetensors`` layout: ``emb_params``, or ``clip_l``/``clip_g`` (SDXL)."""
    from safetensors.torch import save as safetensors_bytes

    cpu = [table.detach().float().cpu().contiguous() for table in tables]
    tensors = (
        {"clip_l": cpu[0], "clip_g": cpu[1]} if model.family is ModelFamily.SDXL else {"emb_params": cpu[0]}
    )
    return safetensors_bytes(tensors, metadata)


def _with_name(caption: str, name: str) -> str:
    return caption if name in caption else f"{name}, {caption}" if caption else name


def train_embedding(
    model: Any,
    dataset: Dataset,
    config: EmbeddingTrainingConfig,
    out_dir: Path,
    *,
    on_step: StepCallback | None = None,
    on_eval: EvalCallback | None = None,
    on_sample: EmbeddingSampleCallback | None = None,
    keep_previous: Path | None = None,
) -> TrainingResult:
    """Train the embedding ``config.name`` on ``model``; write ``out_dir/<name>.safetensors``.

    ``on_step`` and the sample steps are as in :func:`webui.training.lora.train_lora`; ``on_sample(step,
    tables)`` gets the vectors as trained so far. A loss that is not finite raises :class:`TrainingError`
    and saves nothing; the checkpoint's weights are not changed.

    With ``config.init_file`` the vectors start from that file and its step count goes on. When that file
    is ``out_dir``'s own ``<name>.*`` (A1111's "train this embedding"), the trained file replaces it and the
    previous one is moved into ``keep_previous`` (required then), so nothing is lost."""
    from diffusers import DDPMScheduler

    from webui.metadata.image_io import save_new_file
    from webui.runtime.conditioning import build_chunks, substituted_embeddings

    init_file = Path(config.init_file) if config.init_file else None
    replaced = (
        init_file
        if init_file is not None and init_file.stem == config.name and init_file.parent == Path(out_dir)
        else None
    )
    if replaced is not None and keep_previous is None:
        raise TrainingError(f"training {replaced.name} on replaces it: say where its previous version goes")
    target = checked_target(
        config, model, out_dir, "Training an embedding", existing_allowed=replaced is not None
    )
    if init_file is not None:
        initial, previous_steps = file_vectors(model, init_file)
        config.vectors = int(initial[0].shape[0])
    else:
        initial, previous_steps = starting_vectors(model, config.init_text, config.vectors), 0
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
    vectors = [torch.nn.Parameter(table.to(device)) for table in initial]
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
            base_rates=[config.learning_rate], rng=rng, generator=generator, on_step=on_step,
            on_eval=on_eval, sample=sample, grad_text=True,
        )  # fmt: skip
        if result.steps:
            metadata = {
                "name": config.name,
                "step": str(previous_steps + result.steps),
                "sd_checkpoint": config.base_model_hash,
                "sd_checkpoint_name": str(getattr(model.record, "name", "")),
                "init_text": init_file.name if init_file is not None else config.init_text,
                "trained_in": "Easel",
            }
            data = embedding_file_bytes(model, list(vectors), metadata)
            if replaced is not None and keep_previous is not None:
                _save_replacing(data, target, replaced, keep_previous)
            else:
                save_new_file(data, target)
            result.path = target
    finally:
        torch.set_rng_state(global_rng)
    return result


def _save_replacing(data: bytes, target: Path, previous: Path, keep: Path) -> None:
    """Write ``target`` in place of ``previous`` (which may be ``target`` itself, or ``<name>.pt``), moving
    ``previous`` into the folder ``keep`` first and back if the write fails."""
    from webui.metadata.image_io import save_new_file

    keep.mkdir(parents=True, exist_ok=True)
    kept = keep / previous.name
    if kept.exists():
        raise TrainingError(f"{kept} exists already; nothing was replaced")
    previous.replace(kept)
    try:
        save_new_file(data, target)
    except BaseException:
        kept.replace(previous)
        raise
