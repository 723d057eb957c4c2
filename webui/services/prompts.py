"""The prompt token counter (A1111's ``n/75`` at each prompt box), counted the way the encoder chunks.

The count comes from :func:`webui.runtime.conditioning.count_prompt_tokens`, the function built on the
encoder's own :func:`~webui.runtime.conditioning.build_chunks`, so the number shown is the number the
text encoder gets. The runtime (torch, the CLIP tokenizer) is imported on first use only, so building the
services stays free of torch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.domain.lora import embedding_names_in

log = logging.getLogger(__name__)

CHUNK_TOKENS = 75


@dataclass(frozen=True)
class TokenCount:
    """``tokens`` as A1111 counts them and the chunk count; ``limit`` grows by 75 per chunk."""

    tokens: int
    chunks: int

    @property
    def limit(self) -> int:
        return CHUNK_TOKENS * self.chunks

    @property
    def text(self) -> str:
        return f"{self.tokens}/{self.limit}"


class PromptTokenCounter:
    """Counts a prompt's tokens; textual-inversion embeddings count their vectors.

    ``networks`` (a ``NetworkService``) names the embeddings; ``engine`` returns the generation engine,
    whose loaded model decides which embeddings fit (those that do not are read as words, as the encoder
    reads them). Without a loaded model every embedding counts with its file's vector count.
    """

    def __init__(self, tokenizer_cache: Path, networks: Any = None, engine: Any = None) -> None:
        self.tokenizer_cache = tokenizer_cache
        self.networks = networks
        self._engine = engine
        self._store: Any = None  # webui.runtime.embeddings.EmbeddingStore, made with _counter
        self._counter: tuple[Any, Any] | None = None  # (count_prompt_tokens, tokenizer), made on first use
        self._lock = threading.Lock()

    def count(self, prompt: str, steps: int = 20) -> TokenCount:
        count_prompt_tokens, tokenizer = self._runtime()
        tokens, chunks = count_prompt_tokens(prompt or "", tokenizer, self.embedding_counts(prompt), steps)
        return TokenCount(tokens, chunks)

    def warm_up(self) -> None:
        """Import the counter and its tokenizer now (Easel's start does, before it loads a checkpoint, so
        the first count does not wait for that load)."""
        self._runtime()

    def _runtime(self) -> tuple[Any, Any]:
        """The counting function and the CLIP tokenizer, imported once.

        The first import holds the engine lock: a model load imports transformers on the generation
        thread (under that lock), and two threads importing transformers at once can see it half made
        ("cannot import name ..."), which would fail the load. Loading a model imports the tokenizer
        too, so after the first load this waits for nothing.
        """
        if self._counter is None:
            engine = self._engine() if self._engine is not None else None
            guard = getattr(engine, "lock", None) or contextlib.nullcontext()
            with guard, self._lock:
                from webui.runtime.conditioning import count_prompt_tokens
                from webui.runtime.embeddings import EmbeddingStore
                from webui.runtime.tokenizer import clip_tokenizer

                self._store = EmbeddingStore()
                self._counter = (count_prompt_tokens, clip_tokenizer(self.tokenizer_cache))
        return self._counter

    def embedding_counts(self, prompt: str) -> dict[str, int]:
        """Vector count of each embedding ``prompt`` names (only those the encoder would substitute)."""
        library = getattr(self.networks, "embeddings", None)
        if library is None or not prompt:
            return {}
        names = library.names()
        used = embedding_names_in(prompt, names) if names else []
        files = [(record.name, record.path) for record in map(library.get, used) if record is not None]
        if not files:
            return {}
        engine: Any = self._engine() if self._engine is not None else None
        model = getattr(getattr(engine, "cache", None), "active", None)
        tables_for = getattr(engine, "embedding_tables", None)
        if model is not None and tables_for is not None:
            tables, _used, _warnings = tables_for(model, files)
            return {name: len(vectors) for name, vectors in tables[0].items()}
        return self._file_counts(files)

    def _file_counts(self, files: list[tuple[str, str]]) -> dict[str, int]:
        self._runtime()  # imports the runtime, makes the embedding store
        from webui.runtime.embeddings import EmbeddingError

        counts: dict[str, int] = {}
        for name, path in files:
            try:
                counts[name] = self._store.get(path, name).count
            except (EmbeddingError, OSError) as exc:  # the encoder skips it too: counted as words
                log.debug("embedding %s not counted: %s", name, exc)
        return counts
