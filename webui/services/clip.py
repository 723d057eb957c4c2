"""The CLIP service: which CLIP models exist, CLIP scores of images against a prompt, interrogation, and
the embedder CLIP guidance steers with. One service for every user of CLIP (gallery scores, best-of-N,
the alignment chart, X/Y/Z cells, training samples, ``/easel/v1/clip/score``, ``/sdapi/v1/interrogate``).

Models live in ``<data>/models/clip`` (see :mod:`webui.registry.clip`); options ``easel_clip_model``
(``Automatic``: the first model that is not the reference CLIP, else the reference), ``easel_clip_device``
(``cpu``, or ``cuda`` opt-in) and ``easel_clip_score`` (score images after generation).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from webui.domain.clip import ClipScores, PhraseScores, clip_text, score_from_cosine, split_phrases
from webui.registry.clip import (
    INTERROGATE_FOLDER,
    ClipModelError,
    ClipModelInfo,
    NoClipModelError,
    scan_clip_models,
)
from webui.services.options import OptionsStore

if TYPE_CHECKING:
    from webui.runtime.clip import ClipEmbedder, ClipLoader
    from webui.runtime.clip_interrogate import Interrogator

log = logging.getLogger(__name__)

AUTOMATIC = "Automatic"

__all__ = ["AUTOMATIC", "ClipModelError", "ClipModelInfo", "ClipService", "NoClipModelError"]


class ClipService:
    """See the module docstring. Thread-safe: scoring and interrogation from several threads share one
    loaded model, used by one caller at a time."""

    def __init__(
        self, root: Path, options: OptionsStore, tokenizer_cache: Path, cache_dir: Path | None = None
    ) -> None:
        self.root = root
        self.options = options
        self.tokenizer_cache = tokenizer_cache
        self.cache_dir = cache_dir  # interrogation's list embeddings per model (None: in memory only)
        self._lock = threading.RLock()
        self._loader: ClipLoader | None = None
        self._interrogator: Interrogator | None = None
        self._reported: set[tuple[str, str]] = set()

    # ----------------------------------------------------------------------------------------- models

    def models(self) -> list[ClipModelInfo]:
        """Every CLIP model in the folder, usable or not (``error`` says why not; logged once)."""
        found = scan_clip_models(self.root)
        for info in found:
            if info.error and (str(info.path), info.error) not in self._reported:
                self._reported.add((str(info.path), info.error))
                log.warning("CLIP model %s is not usable: %s", info.name, info.error)
        return found

    def usable_models(self) -> list[ClipModelInfo]:
        return [info for info in self.models() if info.usable]

    def available(self) -> bool:
        return bool(self.usable_models())

    def choices(self) -> list[str]:
        """The ``easel_clip_model`` dropdown: Automatic, then the usable models' names."""
        return [AUTOMATIC, *(info.name for info in self.usable_models())]

    def missing_note(self) -> str:
        return (
            f"No CLIP model found. Put a CLIP model into {self.root}: a transformers CLIPModel folder "
            "(config.json + model.safetensors, e.g. openai/clip-vit-base-patch32) or an OpenAI-layout "
            ".safetensors file (ViT-B/32, B/16, L/14). Easel ships models/clip/easel-reference-clip/."
        )

    def model_info(self, model: str | None = None) -> ClipModelInfo:
        """The model ``model`` names (None / Automatic: the option, then the automatic choice).

        ``LookupError`` for an unknown name or when there is none; ``ClipModelError`` for an unusable one.
        """
        everything = self.models()
        wanted = model if model not in (None, "", AUTOMATIC) else self.options.get().easel_clip_model
        from_settings = model in (None, "", AUTOMATIC) and wanted not in (None, "", AUTOMATIC)
        if from_settings and not any(wanted in (info.name, info.path.name) for info in everything):
            # The model chosen in Settings was removed since: score with the automatic choice (the
            # infotext names the model that scored) rather than failing every generation.
            log.warning("CLIP model %r from Settings is not in %s; using Automatic", wanted, self.root)
            wanted = AUTOMATIC
        if wanted in (None, "", AUTOMATIC):
            usable = [info for info in everything if info.usable]
            if not usable:
                reasons = " ".join(f"({info.error})" for info in everything)
                raise NoClipModelError(f"{self.missing_note()} {reasons}".strip())
            own = [info for info in usable if not info.reference]
            return (own or usable)[0]
        for info in everything:
            if info.name == wanted or info.path.name == wanted:
                if info.error:
                    raise ClipModelError(info.error)
                return info
        names = ", ".join(info.name for info in everything if info.usable) or "none"
        raise LookupError(f"unknown CLIP model {wanted!r}; models in {self.root}: {names}")

    def model_name(self, model: str | None = None) -> str:
        return self.model_info(model).name

    def device(self) -> str:
        return str(self.options.get().easel_clip_device)

    def embedder(self, model: str | None = None) -> ClipEmbedder:
        """The loaded model (the last one stays loaded) on the CLIP device."""
        info = self.model_info(model)
        with self._lock:
            if self._loader is None:
                from webui.runtime.clip import ClipLoader

                self._loader = ClipLoader(self.tokenizer_cache)
            return self._loader.load(info, self.device())

    def unload(self) -> None:
        with self._lock:
            if self._loader is not None:
                self._loader.unload()

    # ---------------------------------------------------------------------------------------- scoring

    def score(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        *,
        model: str | None = None,
        phrases: bool = False,
    ) -> ClipScores:
        """CLIP scores of ``images`` against ``prompt`` (and each of its phrases with ``phrases``)."""
        if not images:
            raise ValueError("no images to score")
        text = clip_text(prompt or "")
        if not text:
            raise ValueError("the prompt is empty: CLIP scores an image against a prompt")
        parts = split_phrases(prompt) if phrases else []
        with self._lock:
            embedder = self.embedder(model)
            image_embeddings = embedder.pil_images(list(images))
            text_embeddings = embedder.text([text, *parts])
        cosines = (text_embeddings @ image_embeddings.T).cpu().tolist()  # texts x images
        scores = tuple(score_from_cosine(value) for value in cosines[0])
        phrase_scores = tuple(
            PhraseScores(part, tuple(score_from_cosine(value) for value in row))
            for part, row in zip(parts, cosines[1:], strict=True)
        )
        return ClipScores(embedder.name, scores, phrase_scores)

    # ------------------------------------------------------------------------------------ interrogate

    def interrogate(self, image: Image.Image, *, model: str | None = None) -> str:
        """A prompt for ``image``, from the phrase lists (see :mod:`webui.runtime.clip_interrogate`)."""
        from webui.runtime.clip_interrogate import Interrogator, PhraseLists

        user_dir = self.root / INTERROGATE_FOLDER
        with self._lock:
            embedder = self.embedder(model)
            if self._interrogator is None:
                self._interrogator = Interrogator()
            info = self.model_info(model)
            model_dir = info.path / INTERROGATE_FOLDER if info.path.is_dir() else None
            key = (embedder.identity, PhraseLists.stamp(user_dir, model_dir))
            image_embedding = embedder.pil_images([image])
            weights = info.weights
            stat = weights.stat()
            return self._interrogator.interrogate(
                image_embedding,
                key=key,
                lists=lambda: PhraseLists.load(user_dir, model_dir),
                embed=embedder.text,
                cache_dir=self.cache_dir,
                model_id=f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}",
            )

    def status(self) -> dict[str, Any]:
        """What the UI and API show about CLIP: models (with reasons for unusable ones) and the choice."""
        try:
            chosen: str | None = self.model_name()
        except (LookupError, ClipModelError):
            chosen = None
        return {
            "model": chosen,
            "device": self.device(),
            "models": [
                {"name": i.name, "kind": i.kind, "reference": i.reference, "error": i.error}
                for i in self.models()
            ],
        }
