"""Prompt → embeddings with the real CLIP tokenizer and tiny, seeded CLIP text encoders (CPU, offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.runtime.conditioning import (
    CHUNK_LENGTH,
    Conditioning,
    PromptEncoder,
    build_chunks,
    pad_conditionings,
)
from webui.runtime.tokenizer import (
    EOS_TOKEN,
    SD2_PAD_TOKEN,
    VOCAB_SIZE,
    build_vocab,
    clip_tokenizer,
    write_tokenizer_files,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HIDDEN = 32


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache") / "clip-tokenizer"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    return clip_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def tokenizer_sd2(tokenizer_dir: Path):
    return clip_tokenizer(tokenizer_dir, pad_token=SD2_PAD_TOKEN)


def _config(**extra: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=77,
        **extra,
    )


def _tiny_encoder(seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(_config()).eval()


@pytest.fixture(scope="module")
def sd_encoder(tokenizer) -> PromptEncoder:
    return PromptEncoder([tokenizer], [_tiny_encoder()], is_sdxl=False)


@pytest.fixture(scope="module")
def sdxl_encoder(tokenizer, tokenizer_sd2) -> PromptEncoder:
    first = _tiny_encoder(1)
    torch.manual_seed(2)
    second = CLIPTextModelWithProjection(_config(projection_dim=32)).eval()
    return PromptEncoder([tokenizer, tokenizer_sd2], [first, second], is_sdxl=True)


def _words(count: int) -> str:
    # "cat" is one token, so the prompt is exactly ``count`` tokens.
    return " ".join(["cat"] * count)


# -- tokenizer -------------------------------------------------------------------------------------------


def test_tokenizer_ids(tokenizer) -> None:
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.bos_token_id == 49406
    assert tokenizer.eos_token_id == 49407
    assert tokenizer.pad_token_id == 49407
    assert tokenizer.convert_tokens_to_ids("!") == 0


def test_tokenizer_pad_variants_are_cached(tokenizer_dir: Path, tokenizer, tokenizer_sd2) -> None:
    assert tokenizer_sd2.pad_token_id == 0
    assert clip_tokenizer(tokenizer_dir) is tokenizer
    assert clip_tokenizer(tokenizer_dir, pad_token=EOS_TOKEN) is tokenizer
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    assert not [p for p in tokenizer_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_write_tokenizer_files(tmp_path: Path) -> None:
    write_tokenizer_files(tmp_path / "tokenizer_2", pad_token=SD2_PAD_TOKEN)
    merges = (tmp_path / "tokenizer_2" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    assert len(merges) == 1 + 48894
    vocab = build_vocab(merges[1:])
    assert vocab["!"] == 0
    assert vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 49406


# -- chunking --------------------------------------------------------------------------------------------


def test_chunk_layout(tokenizer, tokenizer_sd2) -> None:
    (chunk,) = build_chunks("a (cat:1.5)", tokenizer)
    assert len(chunk.ids) == CHUNK_LENGTH
    assert chunk.ids[:4] == (49406, 320, 2368, 49407)
    assert set(chunk.ids[3:]) == {49407}
    assert chunk.weights[:4] == (1.0, 1.0, 1.5, 1.0)
    (chunk2,) = build_chunks("a (cat:1.5)", tokenizer_sd2)
    assert chunk2.ids[:4] == (49406, 320, 2368, 49407)
    assert set(chunk2.ids[4:]) == {0}


def test_75_tokens_is_one_chunk_76_is_two(tokenizer) -> None:
    assert len(build_chunks(_words(75), tokenizer)) == 1
    assert build_chunks(_words(75), tokenizer)[0].ids[-1] == 49407
    assert len(build_chunks(_words(76), tokenizer)) == 2
    assert len(build_chunks(_words(150), tokenizer)) == 2
    assert len(build_chunks(_words(151), tokenizer)) == 3
    assert len(build_chunks("", tokenizer)) == 1


def test_break_starts_a_new_chunk(tokenizer) -> None:
    first, second = build_chunks("a cat BREAK a dog", tokenizer)
    assert first.ids[:4] == (49406, 320, 2368, 49407)
    assert second.ids[:4] == (49406, 320, 1929, 49407)


def test_chunk_breaks_after_a_recent_comma(tokenizer) -> None:
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    # 70 words, a comma (token 71), then 10 more words: the chunk is cut after the comma.
    first, second = build_chunks(_words(70) + ", " + _words(10), tokenizer)
    assert first.ids[71] == comma
    assert first.ids[72] == 49407
    assert second.ids[1:11] == (2368,) * 10
    # A comma more than 20 tokens back is ignored: the chunk is simply filled.
    first, second = build_chunks(_words(50) + ", " + _words(40), tokenizer)
    assert first.ids[51] == comma
    assert first.ids[75] == 2368
    assert second.ids[1:16] == (2368,) * 15


# -- encoding --------------------------------------------------------------------------------------------


def test_short_and_long_prompt_shapes(sd_encoder: PromptEncoder) -> None:
    assert sd_encoder.encode("a photo of a cat").embeds.shape == (1, 77, HIDDEN)
    long = sd_encoder.encode(_words(100))
    assert long.embeds.shape == (1, 154, HIDDEN)
    assert long.chunks == 2
    assert long.pooled is None


def test_break_makes_two_chunks(sd_encoder: PromptEncoder) -> None:
    assert sd_encoder.encode("a cat BREAK a dog").embeds.shape == (1, 154, HIDDEN)


def test_exact_chunk_boundary(sd_encoder: PromptEncoder) -> None:
    assert sd_encoder.encode(_words(75)).chunks == 1
    assert sd_encoder.encode(_words(76)).chunks == 2


def test_weighting_scales_tokens_and_keeps_mean(sd_encoder: PromptEncoder) -> None:
    plain = sd_encoder.encode("a photo of a cat").embeds
    weighted = sd_encoder.encode("a photo of a (cat:1.5)").embeds
    assert torch.allclose(plain.mean(), weighted.mean(), atol=1e-6)
    # The "cat" token (position 5) is scaled by 1.5 relative to the others, up to the common rescale.
    scale = weighted[0, 1] / plain[0, 1]
    assert torch.allclose(weighted[0, 5], plain[0, 5] * 1.5 * scale, atol=1e-5)
    assert not torch.allclose(plain[0, 5], weighted[0, 5])


def test_unit_weight_equals_plain(sd_encoder: PromptEncoder) -> None:
    assert torch.equal(sd_encoder.encode("a (cat:1.0) sits").embeds, sd_encoder.encode("a cat sits").embeds)


def test_lora_tags_are_not_encoded(sd_encoder: PromptEncoder) -> None:
    assert torch.equal(sd_encoder.encode("a <lora:x:0.5>cat").embeds, sd_encoder.encode("a cat").embeds)


def test_clip_skip(sd_encoder: PromptEncoder) -> None:
    one = sd_encoder.encode("a cat", clip_skip=1).embeds
    two = sd_encoder.encode("a cat", clip_skip=2).embeds
    assert one.shape == two.shape
    assert not torch.allclose(one, two)
    encoder = sd_encoder.text_encoders[0]
    ids = torch.tensor([build_chunks("a cat", sd_encoder.tokenizers[0])[0].ids])
    with torch.no_grad():
        out = encoder(input_ids=ids, output_hidden_states=True)
        expected = encoder.final_layer_norm(out.hidden_states[-2])
    assert torch.allclose(two, expected)
    with pytest.raises(ValueError, match="clip_skip"):
        sd_encoder.encode("a cat", clip_skip=3)


def test_pair_padding(sd_encoder: PromptEncoder) -> None:
    cond, uncond = sd_encoder.encode_pair(_words(100), "blurry")
    assert cond.embeds.shape == uncond.embeds.shape == (1, 154, HIDDEN)
    empty = sd_encoder.encode("").embeds
    assert torch.equal(uncond.embeds[:, 77:], empty)
    assert torch.equal(uncond.embeds[:, :77], sd_encoder.encode("blurry").embeds)
    cond, uncond = sd_encoder.encode_pair("cat", _words(160))
    assert cond.chunks == uncond.chunks == 3


def test_pad_conditionings_helper() -> None:
    a = Conditioning(torch.zeros(1, 77, 4))
    b = Conditioning(torch.ones(1, 231, 4))
    empty = Conditioning(torch.full((1, 77, 4), 2.0))
    padded_a, padded_b = pad_conditionings([a, b], empty)
    assert padded_a.embeds.shape == (1, 231, 4)
    assert padded_a.embeds[0, 77:].eq(2.0).all()
    assert padded_b is b


def test_schedule(sd_encoder: PromptEncoder) -> None:
    schedule = sd_encoder.encode_schedule("a [dog:cat:0.5]", "[blurry|" + _words(90) + "]", steps=4)
    assert [end for end, _ in schedule.cond] == [2, 4]
    assert [end for end, _ in schedule.uncond] == [1, 2, 3, 4]
    lengths = {c.embeds.shape[1] for _, c in schedule.cond + schedule.uncond}
    assert lengths == {154}
    # Identical texts are encoded once and shared.
    assert schedule.uncond[0][1].embeds.data_ptr() != schedule.uncond[1][1].embeds.data_ptr()
    assert schedule.uncond[2][1] is schedule.uncond[0][1]
    cond, _ = schedule.at(0)
    assert torch.equal(cond.embeds[:, :77], sd_encoder.encode("a dog").embeds)
    cond, _ = schedule.at(3)
    assert torch.equal(cond.embeds[:, :77], sd_encoder.encode("a cat").embeds)
    assert not schedule.is_static
    static = sd_encoder.encode_schedule("a cat", "", steps=20)
    assert static.is_static
    assert static.cond[0][0] == 20


def test_sdxl_pair(sdxl_encoder: PromptEncoder) -> None:
    cond = sdxl_encoder.encode("a photo of a cat")
    assert cond.embeds.shape == (1, 77, 2 * HIDDEN)
    assert cond.pooled is not None
    assert cond.pooled.shape == (1, 32)
    long = sdxl_encoder.encode(_words(100))
    assert long.embeds.shape == (1, 154, 2 * HIDDEN)
    assert long.pooled is not None
    assert long.pooled.shape == (1, 32)
    cond, uncond = sdxl_encoder.encode_pair(_words(100), "")
    assert cond.embeds.shape == uncond.embeds.shape == (1, 154, 64)
    # A1111 encodes an empty SDXL negative prompt as zeros (the padding chunk is the empty-prompt encoding).
    assert uncond.embeds[:, :77].eq(0).all()
    assert uncond.pooled is not None and uncond.pooled.eq(0).all()


def test_sdxl_uses_penultimate_layer_without_final_norm(sdxl_encoder: PromptEncoder) -> None:
    cond = sdxl_encoder.encode("a cat")
    first, second = sdxl_encoder.text_encoders
    ids = build_chunks("a cat", sdxl_encoder.tokenizers[0])[0].ids
    ids2 = build_chunks("a cat", sdxl_encoder.tokenizers[1])[0].ids
    with torch.no_grad():
        h1 = first(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-2]
        out2 = second(input_ids=torch.tensor([ids2]), output_hidden_states=True)
    assert torch.allclose(cond.embeds, torch.cat([h1, out2.hidden_states[-2]], dim=-1))
    assert cond.pooled is not None
    assert torch.allclose(cond.pooled, out2.text_embeds)


def test_follows_encoder_dtype(tokenizer) -> None:
    encoder = PromptEncoder([tokenizer], [_tiny_encoder().to(torch.bfloat16)], is_sdxl=False)
    assert encoder.encode("a (cat:1.2)").embeds.dtype == torch.bfloat16


def test_sdxl_refiner_single_encoder(tokenizer_sd2) -> None:
    torch.manual_seed(3)
    second = CLIPTextModelWithProjection(_config(projection_dim=32)).eval()
    refiner = PromptEncoder([tokenizer_sd2], [second], is_sdxl=True)
    cond = refiner.encode("a cat")
    assert cond.embeds.shape == (1, 77, HIDDEN)
    assert cond.pooled is not None and cond.pooled.shape == (1, 32)
    with pytest.raises(ValueError, match="CLIPTextModelWithProjection"):
        PromptEncoder([tokenizer_sd2], [_tiny_encoder()], is_sdxl=True).encode("a cat")
