"""The prompt token counter agrees with the encoder: same chunks, same embedding widths, tags not counted."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPTextModel

from tests.integration.test_conditioning import HIDDEN, _config, _words
from webui.runtime.conditioning import PromptEncoder, count_prompt_tokens
from webui.runtime.tokenizer import clip_tokenizer
from webui.services.prompts import PromptTokenCounter, TokenCount

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache") / "clip-tokenizer"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    return clip_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def encoder_with_embedding(tokenizer) -> PromptEncoder:
    torch.manual_seed(0)
    table = {"easel-style": torch.randn(4, HIDDEN)}  # a 4-vector textual-inversion embedding
    return PromptEncoder([tokenizer], [CLIPTextModel(_config()).eval()], is_sdxl=False, embeddings=[table])


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("", (0, 1)),
        ("a red circle on a blue background", (7, 1)),
        # Weights are syntax, not tokens: the same count as the bare words.
        ("a (red:1.3) circle on a [blue] ((background))", (7, 1)),
        # LoRA tags are removed before encoding.
        ("a red circle <lora:easel-reference-grayscale:0.8> on a blue background", (7, 1)),
        (_words(75), (75, 1)),
        (_words(76), (76, 2)),
        (_words(151), (151, 3)),
        # BREAK pads the chunk it ends to 75, as A1111 counts it.
        ("a red circle BREAK a blue background", (78, 2)),
        ("a red circle BREAK", (3, 1)),
        # Prompt editing: the longest prompt of the schedule counts.
        ("a [cat:big fluffy dog:0.5]", (4, 1)),
    ],
)
def test_counts_as_a1111_shows_them(tokenizer, prompt: str, expected: tuple[int, int]) -> None:
    assert count_prompt_tokens(prompt, tokenizer) == expected


def test_a_comma_cut_moves_the_tail_to_the_next_chunk(tokenizer) -> None:
    # 70 words, a comma, 10 words: the first chunk ends after the comma (71 tokens, padded to 75).
    assert count_prompt_tokens(_words(70) + ", " + _words(10), tokenizer) == (85, 2)


def test_embeddings_count_their_vectors(tokenizer) -> None:
    assert count_prompt_tokens("a easel-style cat", tokenizer, {"easel-style": 4}) == (6, 1)
    # An embedding is kept whole in one chunk, as the encoder keeps it.
    tokens, chunks = count_prompt_tokens(_words(73) + " easel-style", tokenizer, {"easel-style": 4})
    assert (tokens, chunks) == (79, 2)
    assert count_prompt_tokens("a easel-style cat", tokenizer, {"easel-style": 1}) == (3, 1)
    # A name that is no embedding is read as the words it spells.
    assert count_prompt_tokens("a easel-style cat", tokenizer)[0] > 3


@pytest.mark.parametrize(
    "prompt",
    [
        "a red circle",
        _words(76),
        _words(160),
        "a red circle BREAK a blue background BREAK green",
        "(a red:1.2) circle <lora:x:1> " + _words(80),
        _words(73) + " easel-style",
        "easel-style " * 30,
    ],
)
def test_the_counter_and_the_encoder_agree_on_chunks(
    tokenizer, encoder_with_embedding: PromptEncoder, prompt: str
) -> None:
    _tokens, chunks = count_prompt_tokens(prompt, tokenizer, {"easel-style": 4})
    assert encoder_with_embedding.encode(prompt).chunks == chunks


def test_service_counts_embeddings_from_the_library(tokenizer_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "easel-style.safetensors"
    save_file({"emb_params": torch.zeros(3, HIDDEN)}, str(path))
    record = SimpleNamespace(name="easel-style", path=str(path))
    library = SimpleNamespace(names=lambda: [record.name], get={record.name: record}.get)
    counter = PromptTokenCounter(tokenizer_dir, SimpleNamespace(embeddings=library))
    assert counter.count("a easel-style cat") == TokenCount(5, 1)
    assert counter.count("a easel-style cat").text == "5/75"
    assert counter.count(_words(80)).text == "80/150"
    # A broken embedding file is read as words by the encoder, and counted so.
    path.write_bytes(b"not an embedding")
    assert counter.count("a easel-style cat").tokens > 5


def test_the_first_count_imports_the_runtime_under_the_engine_lock(tokenizer_dir: Path) -> None:
    """A model load imports transformers under the engine lock; the counter's first import waits for it."""

    class RecordingLock:
        entered = 0

        def __enter__(self) -> None:
            RecordingLock.entered += 1

        def __exit__(self, *exc: object) -> None:
            return None

    engine = SimpleNamespace(lock=RecordingLock())
    counter = PromptTokenCounter(tokenizer_dir, None, lambda: engine)
    assert counter.count("a red circle").text == "3/75"
    assert counter.count("a red circle on a blue background").text == "7/75"
    assert RecordingLock.entered == 1  # only the first count takes it


def test_start_readies_the_counter_before_loading_a_checkpoint(tmp_path: Path) -> None:
    """The first count on a fresh page does not wait for the checkpoint load that start begins."""
    from webui.container import build_services
    from webui.settings import Settings

    services = build_services(Settings(data_dir=tmp_path, preload_model=False))  # no checkpoint at all
    assert services.prompt_tokens is not None and services.prompt_tokens._counter is None
    try:
        services.preload().join(120)
        assert services.prompt_tokens._counter is not None
        assert services.prompt_tokens.count("a red circle").text == "3/75"
    finally:
        services.generation.shutdown()
