"""Interrogate CLIP: a prompt for an image, built by ranking phrase lists with a CLIP model.

The lists are plain text files, one phrase per line (``#`` starts a comment), shipped in
``webui/runtime/configs/clip/interrogate/``; a file with the same name in ``models/clip/interrogate/``
replaces the shipped one. A CLIP model folder may carry its own ``interrogate/`` folder: it names what that
model knows (a small model trained on a few words, such as Easel's reference CLIP), so for that model only
those files are read (a list it does not have is empty). ``{colour}`` in a line stands for each line of
``colours.txt`` (two different colours when a line has two slots: a shape on a background of its own colour
would not be seen).

The prompt is the best line of ``subjects.txt`` (the caption), then, per list of :data:`EXTRA_LISTS` in
order, its best lines — at most the list's count, and only those that stand out nearly as much as the
best one (within :data:`KEEP_FRACTION` of the gap between the best and the list's mean score).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.registry.architecture import config_root

log = logging.getLogger(__name__)

SLOT = "{colour}"
SUBJECTS, COLOURS = "subjects.txt", "colours.txt"
EXTRA_LISTS: tuple[tuple[str, int], ...] = (("mediums.txt", 1), ("styles.txt", 2), ("flavours.txt", 3))
LIST_FILES = (SUBJECTS, COLOURS, *(name for name, _ in EXTRA_LISTS))
KEEP_FRACTION = 0.25
BATCH = 256


def bundled_lists_dir() -> Path:
    return config_root() / "clip" / "interrogate"


def read_list(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and line not in lines:
            lines.append(line)
    return lines


def expand(templates: list[str], colours: list[str]) -> list[str]:
    """Each template with its ``{colour}`` slots filled by every combination of distinct colours."""
    out: list[str] = []
    for template in templates:
        slots = template.count(SLOT)
        if slots == 0:
            out.append(template)
            continue
        for combo in itertools.permutations(colours, slots):
            text = template
            for colour in combo:
                text = text.replace(SLOT, colour, 1)
            out.append(text)
    return out


@dataclass(frozen=True)
class PhraseLists:
    subjects: list[str]  # expanded
    extras: list[tuple[list[str], int]]  # (lines, how many at most)

    @classmethod
    def load(cls, user_dir: Path | None, model_dir: Path | None = None) -> PhraseLists:
        """The lists for one model: its own ``interrogate/`` folder when it has one, else the user's
        files over the shipped ones."""
        own = model_dir if model_dir is not None and model_dir.is_dir() else None

        def path(name: str) -> Path | None:
            if own is not None:
                return own / name if (own / name).is_file() else None
            if user_dir is not None and (user_dir / name).is_file():
                return user_dir / name
            return bundled_lists_dir() / name

        def lines(name: str) -> list[str]:
            found = path(name)
            return read_list(found) if found is not None else []

        subjects = expand(lines(SUBJECTS), lines(COLOURS))
        if not subjects:
            where = path(SUBJECTS) or (own / SUBJECTS if own is not None else SUBJECTS)
            raise ValueError(f"the interrogation list {where} is missing or empty")
        extras = [(lines(name), count) for name, count in EXTRA_LISTS]
        return cls(subjects, [(found, count) for found, count in extras if found])

    def digest(self) -> str:
        """A hash of every line in order: names the cached embeddings of exactly these lists."""
        text = "\n\n".join(["\n".join(self.subjects), *("\n".join(lines) for lines, _ in self.extras)])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @staticmethod
    def stamp(*folders: Path | None) -> tuple[object, ...]:
        """Changes when a list in one of ``folders`` is added, removed or edited (cache key)."""
        stamps: list[object] = []
        for folder in folders:
            if folder is None:
                continue
            for name in LIST_FILES:
                try:
                    stamps.append((str(folder), name, (folder / name).stat().st_mtime_ns))
                except OSError:
                    stamps.append((str(folder), name, None))
        return tuple(stamps)


class Interrogator:
    """Ranks the lists with one embedder; the lists' text embeddings are computed once per model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._lists: PhraseLists | None = None
        self._embeddings: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def _prepare(
        self,
        key: tuple[object, ...],
        lists: Callable[[], PhraseLists],
        embed: Callable[[list[str]], torch.Tensor],
        cache_dir: Path | None,
        model_id: str,
    ) -> tuple[PhraseLists, tuple[torch.Tensor, list[torch.Tensor]]]:
        with self._lock:
            if self._key != key or self._lists is None or self._embeddings is None:
                loaded = lists()
                name = hashlib.sha256(f"{model_id}\n{loaded.digest()}".encode()).hexdigest()[:24]
                cache_file = cache_dir / f"{name}.safetensors" if cache_dir is not None else None
                embeddings = _read_cache(cache_file, loaded)
                if embeddings is None:

                    def encode(texts: list[str]) -> torch.Tensor:
                        return torch.cat([embed(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)])

                    embeddings = (encode(loaded.subjects), [encode(lines) for lines, _ in loaded.extras])
                    _write_cache(cache_file, embeddings)
                self._key, self._lists, self._embeddings = key, loaded, embeddings
            return self._lists, self._embeddings

    def interrogate(
        self,
        image_embedding: torch.Tensor,
        *,
        key: tuple[object, ...],
        lists: Callable[[], PhraseLists],
        embed: Callable[[list[str]], torch.Tensor],
        cache_dir: Path | None = None,
        model_id: str = "",
    ) -> str:
        """The prompt for one image embedding (``1 x D`` or ``D``, L2-normalised).

        With ``cache_dir``, the lists' embeddings are kept there per ``model_id`` (which must change when
        the model's weights do) and list contents, so a restart does not embed them again.
        """
        loaded, (subjects, extras) = self._prepare(key, lists, embed, cache_dir, model_id)
        image = image_embedding.reshape(-1).to(subjects.device, subjects.dtype)
        parts = [loaded.subjects[int(torch.argmax(subjects @ image))]]
        for (lines, count), embeddings in zip(loaded.extras, extras, strict=True):
            parts.extend(best_lines(lines, embeddings @ image, count))
        return ", ".join(parts)


def best_lines(lines: list[str], similarity: torch.Tensor, count: int) -> list[str]:
    """Up to ``count`` lines, best first, that stand out nearly as much as the best (see module docstring)."""
    order = torch.argsort(similarity, descending=True)
    best, mean = float(similarity[order[0]]), float(similarity.mean())
    threshold = best - KEEP_FRACTION * (best - mean)
    return [lines[int(i)] for i in order[:count] if float(similarity[i]) >= threshold]


def _read_cache(path: Path | None, lists: PhraseLists) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    if path is None or not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        subjects = tensors["subjects"]
        extras = [tensors[f"extra{index}"] for index in range(len(lists.extras))]
    except Exception as exc:  # a damaged cache file is rebuilt
        log.warning("ignoring the interrogation cache %s (%s)", path, exc)
        return None
    sizes = [len(lists.subjects), *(len(lines) for lines, _ in lists.extras)]
    if [subjects.shape[0], *(extra.shape[0] for extra in extras)] != sizes:
        return None
    return subjects, extras


def _write_cache(path: Path | None, embeddings: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    if path is None:
        return
    from safetensors.torch import save_file

    subjects, extras = embeddings
    tensors = {"subjects": subjects.cpu().contiguous()}
    tensors.update({f"extra{index}": extra.cpu().contiguous() for index, extra in enumerate(extras)})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".interrogate-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as exc:  # the cache only saves time
        log.warning("could not write the interrogation cache %s (%s)", path, exc)
