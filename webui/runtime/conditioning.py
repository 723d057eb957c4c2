"""A1111-style prompt conditioning: prompt text → text-encoder embeddings.

The steps, each matching what A1111 users expect from a prompt:

1. ``<lora:...>``-style tags are removed (they are applied to the model elsewhere, never encoded).
2. Prompt editing / alternation are resolved per sampling step (:func:`webui.domain.prompt.prompt_schedule`).
3. Attention syntax is parsed into weighted fragments (:func:`webui.domain.prompt.parse_attention`); each
   fragment is tokenized on its own, without special tokens.
4. Tokens are packed into chunks of 75 (:func:`build_chunks`): ``BREAK`` ends a chunk, and a chunk that
   fills up within 20 tokens after a comma is cut just after that comma, the rest moving to the next chunk.
   Each chunk becomes BOS + 75 tokens + EOS = 77 ids, padded with EOS and then, after the first EOS, with
   the tokenizer's pad token (``!`` for SD2 and SDXL's second encoder).
5. Every chunk is encoded. SD1/SD2: hidden state ``-clip_skip`` followed by the final layer norm. SDXL:
   hidden state ``-(clip_skip + 1)`` of both encoders without the final norm, joined on the feature axis,
   plus the second encoder's projected pooled output of the first chunk.
6. Emphasis ("Original"): each token's vector is multiplied by its weight, then the chunk is rescaled so
   its mean equals the unweighted mean.
7. Chunks are joined along the sequence axis: ``[1, 77 * chunks, dim]``. Conditionings that are used
   together (prompt and negative, every scheduled prompt) are padded to one length with the encoding of an
   empty prompt, as A1111 does.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from webui.domain.prompt import (
    Break,
    extract_extra_networks,
    parse_attention,
    prompt_schedule,
)
from webui.runtime.devices import execution_device

CHUNK_TOKENS = 75
CHUNK_LENGTH = CHUNK_TOKENS + 2
COMMA_BACKTRACK = 20  # A1111 option "comma_padding_backtrack"
_COMMA_TOKEN = ",</w>"


@dataclass(frozen=True)
class TokenChunk:
    """77 token ids (BOS, 75 tokens or padding, EOS/padding) and one weight per id.

    ``slots``: ``(position, embedding name, vector row)`` for positions that take a textual-inversion
    vector instead of their token's embedding (their id is a placeholder).
    """

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    slots: tuple[tuple[int, str, int], ...] = ()
    length: int = 0  # prompt tokens in this chunk; the rest of the 75 is padding


@dataclass(frozen=True)
class Conditioning:
    """Text-encoder output for one prompt.

    ``embeds``: ``[1, 77 * chunks, dim]``; ``pooled``: ``[1, projection_dim]`` for SDXL, else ``None``.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // CHUNK_LENGTH


@dataclass(frozen=True)
class ScheduledConditioning:
    """Per-step conditionings for prompt and negative: ``(end_step, Conditioning)`` segments, one length.

    Look segments up with :meth:`at` using the sampler's 0-based step index (A1111's convention).
    """

    cond: list[tuple[int, Conditioning]]
    uncond: list[tuple[int, Conditioning]]

    def at(self, step: int) -> tuple[Conditioning, Conditioning]:
        return _segment_at(self.cond, step), _segment_at(self.uncond, step)

    @property
    def is_static(self) -> bool:
        """True when neither prompt changes during sampling, so callers can skip per-step lookups."""
        return len(self.cond) == 1 and len(self.uncond) == 1


def _segment_at(schedule: list[tuple[int, Conditioning]], step: int) -> Conditioning:
    for end_step, conditioning in schedule:
        if step <= end_step:
            return conditioning
    return schedule[-1][1]


def build_chunks(
    prompt: str, tokenizer: Any, embeddings: Mapping[str, int] | None = None
) -> list[TokenChunk]:
    """Tokenize a plain prompt (no editing syntax left) into weighted 77-token chunks.

    ``tokenizer`` is a transformers CLIP tokenizer; its BOS, EOS and pad ids are used. An empty prompt
    gives one chunk of BOS, EOS and padding. ``embeddings`` (name → vector count) marks textual-inversion
    names: each use takes that many positions, kept in one chunk when it fits, recorded in ``slots``.
    """
    items = parse_attention(prompt)
    fragments = [item for item in items if not isinstance(item, Break)]
    texts = [fragment.text for fragment in fragments]
    token_lists: list[list[Any]] = (
        _tokenize_with_embeddings(texts, tokenizer, embeddings)
        if embeddings
        else tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        if texts
        else []
    )
    token_iter = iter(token_lists)
    comma_id = tokenizer.convert_tokens_to_ids(_COMMA_TOKEN)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id

    chunks: list[TokenChunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def finish_chunk() -> None:
        nonlocal ids, weights, last_comma
        fill = CHUNK_TOKENS - len(ids)
        slots = tuple(
            (position + 1, token.name, token.row)
            for position, token in enumerate(ids)
            if isinstance(token, _EmbeddingToken)
        )
        plain = [_PLACEHOLDER_ID if isinstance(token, _EmbeddingToken) else token for token in ids]
        body_ids = [bos, *plain, *([eos] * fill), eos]
        body_weights = [1.0, *weights, *([1.0] * fill), 1.0]
        first_eos = body_ids.index(eos, 1 + len(ids))
        body_ids[first_eos + 1 :] = [pad] * (CHUNK_LENGTH - first_eos - 1)
        chunks.append(TokenChunk(tuple(body_ids), tuple(body_weights), slots, len(ids)))
        ids, weights, last_comma = [], [], -1

    for item in items:
        if isinstance(item, Break):
            finish_chunk()
            continue
        for token in next(token_iter):
            if (
                isinstance(token, _EmbeddingToken)
                and token.row == 0
                and len(ids) + token.count > CHUNK_TOKENS >= token.count
            ):
                finish_chunk()  # an embedding is not split across chunks when it fits in one
            if token == comma_id:
                last_comma = len(ids)
            elif len(ids) == CHUNK_TOKENS and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                # The chunk is full and a comma is close: end the chunk after the comma instead.
                cut = last_comma + 1
                moved_ids, moved_weights = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                finish_chunk()
                ids, weights = moved_ids, moved_weights
            if len(ids) == CHUNK_TOKENS:
                finish_chunk()
            ids.append(token)
            weights.append(item.weight)
    if ids or not chunks:
        finish_chunk()
    return chunks


def chunked_token_count(chunks: Sequence[TokenChunk]) -> int:
    """A1111's token count of a chunked prompt: 75 for every chunk but the last (a chunk ended early by
    ``BREAK`` or a comma is padded to 75), plus the tokens of the last one."""
    return CHUNK_TOKENS * (len(chunks) - 1) + chunks[-1].length


def count_prompt_tokens(
    prompt: str, tokenizer: Any, embeddings: Mapping[str, int] | None = None, steps: int = 20
) -> tuple[int, int]:
    """``(tokens, chunks)`` of ``prompt`` as the encoder sees it: ``<lora:...>`` tags removed, prompt
    editing resolved (the longest of its per-step prompts counts), weights and ``BREAK`` parsed, each
    embedding taking its vector count. The limit to show is ``chunks * 75``."""
    text, _ = extract_extra_networks(prompt)
    best = (0, 1)
    for _end, plain in prompt_schedule(text, max(1, steps)):
        chunks = build_chunks(plain, tokenizer, embeddings)
        best = max(best, (chunked_token_count(chunks), len(chunks)))
    return best


# Id written at textual-inversion positions; its token embedding is replaced, so any non-special id works.
_PLACEHOLDER_ID = 0


@dataclass(frozen=True)
class _EmbeddingToken:
    name: str
    row: int
    count: int


def _tokenize_with_embeddings(
    texts: list[str], tokenizer: Any, embeddings: Mapping[str, int]
) -> list[list[Any]]:
    """Token ids per text, with each embedding name replaced by markers for its vectors."""
    from webui.domain.lora import embedding_pattern

    names = sorted(embeddings, key=len, reverse=True)
    patterns = [embedding_pattern(name).pattern for name in names]
    splitter = re.compile("(" + "|".join(patterns) + ")") if names else None
    out: list[list[Any]] = []
    for text in texts:
        pieces = splitter.split(text) if splitter is not None else [text]
        tokens: list[Any] = []
        for index, piece in enumerate(pieces):
            if index % 2:  # a captured embedding name
                count = embeddings[piece]
                tokens.extend(_EmbeddingToken(piece, row, count) for row in range(count))
            elif piece.strip():
                tokens.extend(
                    tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
                )
        out.append(tokens)
    return out


class EncodingCache:
    """The text encoders' outputs for the prompts one loaded model encoded last, so an unchanged prompt is
    not encoded again (a batch count, a seed search, an X/Y/Z plot over steps or CFG, a re-run).

    One per loaded model (``LoadedModel.encodings``): a model loaded again starts empty. Each entry is
    keyed by the state of the encoders' weights (the LoRA set merged into them, fp8, where they run; see
    :func:`encoder_state`), the textual-inversion vectors in use, the text and the clip skip. Entries are
    stored as copies, so a caller that changes a tensor it was given in place cannot change the cache.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Conditioning] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Conditioning | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
        return _copied(found)

    def put(self, key: Hashable, value: Conditioning) -> None:
        with self._lock:
            self._items[key] = _copied(value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _copied(conditioning: Conditioning) -> Conditioning:
    pooled = None if conditioning.pooled is None else conditioning.pooled.clone()
    return Conditioning(conditioning.embeds.clone(), pooled)


def encoder_state(model: Any, embeddings: Sequence[Mapping[str, torch.Tensor]] | None) -> Hashable:
    """What, besides the text, decides an encoding of ``model``'s prompts: the LoRA set merged into its
    weights, fp8 storage, the device and dtype the encoders run in, and the textual-inversion vectors (by
    content: a changed embedding file gives another key)."""
    patcher = getattr(model, "lora_patcher", None)
    merged = patcher.applied if patcher is not None else ()
    placement = tuple(
        (str(execution_device(encoder)), str(getattr(encoder, "dtype", "")))
        for encoder in model.text_encoders
    )
    vectors = []
    for table in embeddings or ():
        for name in sorted(table):
            tensor = table[name].detach().to("cpu", torch.float32).contiguous()
            vectors.append((name, tuple(tensor.shape), hashlib.blake2b(tensor.numpy().tobytes()).hexdigest()))
    return (merged, bool(getattr(model, "fp8", False)), placement, tuple(vectors))


def model_prompt_encoder(
    model: Any, embeddings: Sequence[Mapping[str, torch.Tensor]] | None
) -> PromptEncoder:
    """The prompt encoder of a loaded model for one job, using the model's encoding cache."""
    return PromptEncoder(
        model.tokenizers,
        model.text_encoders,
        is_sdxl=model.family.is_sdxl,
        embeddings=embeddings,
        cache=getattr(model, "encodings", None),
        state=encoder_state(model, embeddings),
    )


class PromptEncoder:
    """Encodes A1111 prompts with one text encoder (SD1/SD2) or two (SDXL; one for the SDXL refiner).

    ``tokenizers[i]`` belongs to ``text_encoders[i]`` (transformers ``CLIPTextModel`` or, for SDXL's last
    encoder, ``CLIPTextModelWithProjection``, which also gives the pooled embedding). The encoders are used
    where they are: their device and dtype decide those of the result. ``zero_empty_negative`` (default: on
    for SDXL, as in A1111) encodes an empty negative prompt as zeros.
    """

    def __init__(
        self,
        tokenizers: Sequence[Any],
        text_encoders: Sequence[torch.nn.Module],
        *,
        is_sdxl: bool,
        zero_empty_negative: bool | None = None,
        embeddings: Sequence[Mapping[str, torch.Tensor]] | None = None,
        cache: EncodingCache | None = None,
        state: Hashable = None,
    ) -> None:
        if len(tokenizers) != len(text_encoders) or not tokenizers:
            raise ValueError("need one tokenizer per text encoder, and at least one of each")
        if is_sdxl and len(text_encoders) not in (1, 2):
            raise ValueError(f"SDXL uses two text encoders, the refiner one (got {len(text_encoders)})")
        if not is_sdxl and len(text_encoders) != 1:
            raise ValueError(f"SD1/SD2 use one text encoder (got {len(text_encoders)})")
        self.tokenizers = list(tokenizers)
        self.text_encoders = list(text_encoders)
        self.is_sdxl = is_sdxl
        self.zero_empty_negative = is_sdxl if zero_empty_negative is None else zero_empty_negative
        # Textual-inversion vectors per text encoder (name → [vectors, width]); one mapping per encoder.
        self.embeddings = list(embeddings) if embeddings else [{} for _ in self.text_encoders]
        if len(self.embeddings) != len(self.text_encoders):
            raise ValueError("need one embedding mapping per text encoder")
        # ``cache`` keeps encodings between jobs; ``state`` (``encoder_state``) must then say everything
        # besides the text that decides them. Without a state nothing is cached.
        self.cache = cache if state is not None else None
        self.state = state

    # -- single prompts ---------------------------------------------------------------------------------

    def encode(self, prompt: str, clip_skip: int = 1) -> Conditioning:
        """Encode one plain prompt (attention, BREAK; editing syntax is taken literally); from the cache
        when this model encoded the same text in the same state before."""
        if self.cache is None:
            return self._encode(prompt, clip_skip)
        key = (self.state, self.is_sdxl, clip_skip, prompt)
        found = self.cache.get(key)
        if found is None:
            found = self._encode(prompt, clip_skip)
            self.cache.put(key, found)
        return found

    @torch.no_grad()
    def _encode(self, prompt: str, clip_skip: int) -> Conditioning:
        prompt, _ = extract_extra_networks(prompt)
        chunk_sets = [
            build_chunks(prompt, tokenizer, {name: len(vectors) for name, vectors in table.items()})
            for tokenizer, table in zip(self.tokenizers, self.embeddings, strict=True)
        ]
        if len({len(chunks) for chunks in chunk_sets}) != 1:
            raise ValueError("the tokenizers split this prompt into different numbers of chunks")

        hidden: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for index, (encoder, chunks) in enumerate(zip(self.text_encoders, chunk_sets, strict=True)):
            device = execution_device(encoder)
            input_ids = torch.tensor([chunk.ids for chunk in chunks], dtype=torch.long, device=device)
            with substituted_embeddings(encoder, chunks, self.embeddings[index]):
                output = encoder(input_ids=input_ids, output_hidden_states=True)
            hidden.append(self._select_hidden(encoder, output, clip_skip))
            if self.is_sdxl and index == len(self.text_encoders) - 1:
                text_embeds = getattr(output, "text_embeds", None)
                if text_embeds is None:
                    raise ValueError("SDXL's last text encoder must be a CLIPTextModelWithProjection")
                pooled = text_embeds[:1]

        dtype = hidden[0].dtype
        z = torch.cat([h.to(device=hidden[0].device, dtype=dtype) for h in hidden], dim=-1)  # [k, 77, D]
        z = _apply_emphasis(z, chunk_sets[0])
        embeds = z.reshape(1, -1, z.shape[-1])
        return Conditioning(embeds, pooled)

    def _select_hidden(self, encoder: torch.nn.Module, output: Any, clip_skip: int) -> torch.Tensor:
        layers = len(output.hidden_states) - 1
        if self.is_sdxl:
            if not 1 <= clip_skip < layers:
                raise ValueError(
                    f"clip_skip must be between 1 and {layers - 1} for this model (got {clip_skip})"
                )
            return output.hidden_states[-(clip_skip + 1)]
        if not 1 <= clip_skip <= layers:
            raise ValueError(f"clip_skip must be between 1 and {layers} for this model (got {clip_skip})")
        if clip_skip == 1:
            return output.last_hidden_state
        text_model: Any = getattr(encoder, "text_model", encoder)
        return text_model.final_layer_norm(output.hidden_states[-clip_skip])

    def empty(self, clip_skip: int = 1) -> Conditioning:
        """The encoding of an empty prompt (one chunk), used to pad conditionings to equal length."""
        return self.encode("", clip_skip)

    # -- prompt + negative ------------------------------------------------------------------------------

    def encode_pair(
        self, prompt: str, negative: str, clip_skip: int = 1
    ) -> tuple[Conditioning, Conditioning]:
        """Encode prompt and negative prompt, padded to the same number of chunks."""
        cond = self.encode(prompt, clip_skip)
        uncond = self._encode_negative(negative, clip_skip)
        cond, uncond = self.pad_to_same_length([cond, uncond], clip_skip)
        return cond, uncond

    def encode_schedule(
        self, prompt: str, negative: str, steps: int, clip_skip: int = 1
    ) -> ScheduledConditioning:
        """Encode every prompt-editing / alternation segment of both prompts, all padded to one length.

        Identical texts are encoded once.
        """
        prompt, _ = extract_extra_networks(prompt)
        negative, _ = extract_extra_networks(negative)
        cache: dict[tuple[bool, str], Conditioning] = {}

        def encode_cached(text: str, is_negative: bool) -> Conditioning:
            key = (is_negative, text)
            if key not in cache:
                cache[key] = (
                    self._encode_negative(text, clip_skip) if is_negative else self.encode(text, clip_skip)
                )
            return cache[key]

        cond_schedule = [(end, encode_cached(text, False)) for end, text in prompt_schedule(prompt, steps)]
        uncond_schedule = [(end, encode_cached(text, True)) for end, text in prompt_schedule(negative, steps)]
        padded = self.pad_to_same_length([c for _, c in cond_schedule + uncond_schedule], clip_skip)
        split = len(cond_schedule)
        return ScheduledConditioning(
            cond=[(end, c) for (end, _), c in zip(cond_schedule, padded[:split], strict=True)],
            uncond=[(end, c) for (end, _), c in zip(uncond_schedule, padded[split:], strict=True)],
        )

    def _encode_negative(self, negative: str, clip_skip: int) -> Conditioning:
        negative, _ = extract_extra_networks(negative)
        conditioning = self.encode(negative, clip_skip)
        if self.zero_empty_negative and negative == "":
            pooled = None if conditioning.pooled is None else torch.zeros_like(conditioning.pooled)
            return Conditioning(torch.zeros_like(conditioning.embeds), pooled)
        return conditioning

    def pad_to_same_length(
        self, conditionings: Sequence[Conditioning], clip_skip: int = 1
    ) -> list[Conditioning]:
        """Pad each conditioning with empty-prompt chunks up to the longest one's chunk count."""
        longest = max((c.chunks for c in conditionings), default=0)
        if all(c.chunks == longest for c in conditionings):
            return list(conditionings)
        return pad_conditionings(conditionings, self.empty(clip_skip))


def pad_conditionings(conditionings: Sequence[Conditioning], empty: Conditioning) -> list[Conditioning]:
    """Append copies of ``empty`` (one chunk) to each conditioning until all have the same chunk count."""
    longest = max((c.chunks for c in conditionings), default=0)
    done: dict[int, Conditioning] = {}  # a conditioning listed twice is padded once and stays shared
    padded: list[Conditioning] = []
    for conditioning in conditionings:
        missing = longest - conditioning.chunks
        if missing and id(conditioning) not in done:
            filler = empty.embeds.to(conditioning.embeds).repeat(1, missing, 1)
            done[id(conditioning)] = Conditioning(
                torch.cat([conditioning.embeds, filler], dim=1), conditioning.pooled
            )
        padded.append(done.get(id(conditioning), conditioning))
    return padded


def _apply_emphasis(z: torch.Tensor, chunks: Sequence[TokenChunk]) -> torch.Tensor:
    """A1111 "Original" emphasis on ``z`` ``[chunks, 77, dim]``: weight tokens, keep each chunk's mean."""
    weights = torch.tensor([chunk.weights for chunk in chunks], dtype=torch.float32, device=z.device)
    if bool((weights == 1.0).all()):
        return z
    z32 = z.float()
    original_mean = z32.mean(dim=(1, 2), keepdim=True)
    weighted = z32 * weights.unsqueeze(-1)
    new_mean = weighted.mean(dim=(1, 2), keepdim=True)
    scale = torch.where(new_mean != 0, original_mean / new_mean, torch.ones_like(new_mean))
    return (weighted * scale).to(z.dtype)


@contextmanager
def substituted_embeddings(
    encoder: torch.nn.Module, chunks: Sequence[TokenChunk], table: Mapping[str, torch.Tensor]
) -> Iterator[None]:
    """While encoding ``chunks``, the token-embedding output at their slots is the embedding's vectors.

    A forward hook on this encoder's token-embedding module, removed on exit: no tokenizer or model
    weight is changed, so nothing has to be undone when the model or the embedding set changes.
    """
    slots = [(c, pos, name, row) for c, chunk in enumerate(chunks) for pos, name, row in chunk.slots]
    if not slots:
        yield
        return
    module: Any = encoder.get_input_embeddings()

    def replace(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for c, position, name, row in slots:
            output[c, position] = table[name][row].to(device=output.device, dtype=output.dtype)
        return output

    handle = module.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
