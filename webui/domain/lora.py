"""LoRA and textual-inversion vocabulary shared by every layer: prompt tags, weights, hashes, families.

Pure Python (no torch, no file access). The runtime patches models from :class:`ActiveLora` values; the
UI keeps its LoRA dropdown in sync with the prompt through :func:`lora_tags` and :func:`set_lora_tags`;
the infotext carries ``Lora hashes`` / ``TI hashes`` written by :func:`format_hashes`.

Weights follow A1111's tag syntax: ``<lora:name>`` (1.0), ``<lora:name:w>`` (text encoder and UNet
both ``w``), ``<lora:name:te:unet>`` (text-encoder weight first, as A1111 reads it), and the named forms
``te=`` / ``unet=``. Negative weights are allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from webui.domain.models import ModelFamily
from webui.domain.prompt import extract_extra_networks

LORA_KINDS = ("lora", "lyco")  # A1111 accepts <lyco:...> as an alias of <lora:...>
HASH_LENGTH = 12


class LoraFamily(StrEnum):
    """The base-model family a LoRA was trained for (what decides whether its shapes fit a checkpoint)."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    UNKNOWN = "unknown"

    @property
    def label(self) -> str:
        return {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "unknown": "unknown family"}[self.value]

    @classmethod
    def of_model(cls, family: ModelFamily | None) -> LoraFamily:
        if family is None:
            return cls.UNKNOWN
        if family.is_sdxl:
            return cls.SDXL
        if family.value.startswith("sd2"):
            return cls.SD2
        return cls.SD1

    def fits(self, family: ModelFamily | None) -> bool | None:
        """True/False when both families are known, ``None`` when either is not."""
        model = LoraFamily.of_model(family)
        if self is LoraFamily.UNKNOWN or model is LoraFamily.UNKNOWN:
            return None
        return self is model


def family_from_base_model_version(value: str | None) -> LoraFamily:
    """kohya's ``ss_base_model_version`` / ``modelspec.architecture`` → family (UNKNOWN if unrecognised)."""
    text = (value or "").lower()
    if not text:
        return LoraFamily.UNKNOWN
    if "xl" in text:
        return LoraFamily.SDXL
    if "v2" in text or "sd2" in text or "stable-diffusion-v2" in text:
        return LoraFamily.SD2
    if "v1" in text or "sd1" in text or "stable-diffusion-v1" in text:
        return LoraFamily.SD1
    return LoraFamily.UNKNOWN


# Cross-attention context width (the text-encoder output) → family: 768 (CLIP-L), 1024 (OpenCLIP-H),
# 2048 (CLIP-L + OpenCLIP-bigG side by side).
CONTEXT_DIM_FAMILIES = {768: LoraFamily.SD1, 1024: LoraFamily.SD2, 2048: LoraFamily.SDXL}


@dataclass(frozen=True)
class LoraSpec:
    """One ``<lora:...>`` tag, as written: the name and the two multipliers."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0

    @property
    def weight(self) -> float:
        """The single weight the UI shows (the UNet multiplier, which A1111 defaults to the TE one)."""
        return self.unet_weight


@dataclass(frozen=True)
class ActiveLora:
    """A LoRA resolved to a file, ready for the runtime: ``key`` identifies its content (the hash)."""

    name: str
    path: str
    key: str
    te_weight: float
    unet_weight: float
    family: LoraFamily = LoraFamily.UNKNOWN


class LoraTagError(ValueError):
    """A ``<lora:...>`` tag whose weights are not numbers."""


def _number(text: str, tag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise LoraTagError(f"LoRA tag <{tag}>: {text!r} is not a number") from None


def parse_lora_tags(prompt: str) -> list[LoraSpec]:
    """The LoRA tags of ``prompt`` in order (A1111 weight syntax; see the module docstring)."""
    _, refs = extract_extra_networks(prompt)
    specs: list[LoraSpec] = []
    for ref in refs:
        if ref.kind not in LORA_KINDS:
            continue
        tag = ":".join((ref.kind, ref.name, *ref.params))
        positional = [p for p in ref.params if "=" not in p]
        named = dict(p.split("=", 1) for p in ref.params if "=" in p)
        te = _number(positional[0], tag) if positional else 1.0
        te = _number(named["te"], tag) if "te" in named else te
        unet = _number(positional[1], tag) if len(positional) > 1 else te
        unet = _number(named["unet"], tag) if "unet" in named else unet
        specs.append(LoraSpec(ref.name.strip(), te_weight=te, unet_weight=unet))
    return specs


def format_weight(weight: float) -> str:
    """``1`` → ``"1"``, ``0.75`` → ``"0.75"``: the shortest form, as users write it."""
    text = f"{round(weight, 4):g}"
    return "0" if text == "-0" else text


def lora_tag(name: str, weight: float) -> str:
    return f"<lora:{name}:{format_weight(weight)}>"


_TAG_RE = re.compile(r"<(lora|lyco):([^<>:]+)((?::[^<>]*)?)>")  # no "<" inside: linear on unclosed tags


def lora_tags(prompt: str) -> list[tuple[str, float]]:
    """``(name, weight)`` of every LoRA tag in ``prompt`` (first occurrence of a name wins)."""
    out: dict[str, float] = {}
    for spec in parse_lora_tags(prompt):
        out.setdefault(spec.name, spec.weight)
    return list(out.items())


def set_lora_tags(prompt: str, chosen: Sequence[tuple[str, float]]) -> str:
    """Rewrite ``prompt`` so its LoRA tags are exactly ``chosen`` (name, weight), in that order.

    A tag already in the prompt keeps its place and its text; it is rewritten (as a single weight) only
    when its weight differs. Tags of LoRAs not in ``chosen`` are removed with the separator before them;
    new ones are appended at the end.
    """
    wanted = dict(chosen)
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group(2).strip()
        if name not in wanted or name in seen:
            return "\x00"
        seen.add(name)
        current = [spec for spec in parse_lora_tags(match.group(0)) if spec.name == name]
        if current and current[0].weight == wanted[name] and current[0].te_weight == current[0].unet_weight:
            return match.group(0)
        return lora_tag(name, wanted[name])

    text = _TAG_RE.sub(replace, prompt)
    text = re.sub(r"[ \t]*,?[ \t]*\x00", "", text)
    for name, weight in chosen:
        if name not in seen:
            separator = "" if not text or text.endswith((" ", "\n")) else " "
            text = f"{text}{separator}{lora_tag(name, weight)}"
            seen.add(name)
    return text


def add_lora_tag(prompt: str, name: str, weight: float) -> str:
    """Add (or re-weight) one LoRA tag, keeping the others."""
    current = lora_tags(prompt)
    if any(existing == name for existing, _ in current):
        return set_lora_tags(prompt, [(n, weight if n == name else w) for n, w in current])
    return set_lora_tags(prompt, [*current, (name, weight)])


def rename_lora_tags(prompt: str, renames: Mapping[str, str]) -> str:
    """Replace the name in ``<lora:old...>`` tags by ``renames[old]`` (weights untouched)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(2).strip()
        new = renames.get(name)
        return f"<{match.group(1)}:{new}{match.group(3)}>" if new else match.group(0)

    return _TAG_RE.sub(replace, prompt)


# -- hashes in the infotext ------------------------------------------------------------------------------


def clean_hash_name(name: str) -> str:
    """A name as the ``Lora hashes`` / ``TI hashes`` value holds it: ``:`` and ``,`` removed."""
    return name.replace(":", "").replace(",", "")


def format_hashes(pairs: Iterable[tuple[str, str]]) -> str:
    """``"name: hash12, other: hash12"`` (names cleaned, hashes shortened to 12 hex)."""
    return ", ".join(f"{clean_hash_name(name)}: {value[:HASH_LENGTH]}" for name, value in pairs)


def parse_hashes(value: object) -> dict[str, str]:
    """The inverse of :func:`format_hashes`; malformed entries are skipped."""
    out: dict[str, str] = {}
    for item in str(value or "").split(","):
        name, sep, digest = item.rpartition(":")
        name, digest = name.strip(), digest.strip().lower()
        if sep and name and digest and all(c in "0123456789abcdef" for c in digest):
            out[name] = digest
    return out


# -- textual inversion --------------------------------------------------------------------------------


def embedding_names_in(text: str, names: Iterable[str]) -> list[str]:
    """The embedding names used in ``text`` (whole words, case-sensitive as A1111), in order of use."""
    found: list[tuple[int, str]] = []
    for name in names:
        match = embedding_pattern(name).search(text)
        if match:
            found.append((match.start(), name))
    return [name for _, name in sorted(found)]


def embedding_pattern(name: str) -> re.Pattern[str]:
    """Matches ``name`` as a whole word (not inside a longer word)."""
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")


# -- library records ----------------------------------------------------------------------------------


@dataclass
class LoraRecord:
    """A LoRA file in ``models/Lora`` as the library shows it (read from its header, never its tensors).

    ``name`` is the file stem (what ``<lora:name>`` uses); ``alias`` is kohya's ``ss_output_name``;
    ``group`` is the subfolder (``""`` at the top level). ``sha256`` is the addnet hash (tensor data),
    filled lazily; ``sshs_hash`` is the ``sshs_model_hash`` metadata when the file carries one.
    """

    name: str
    path: str
    group: str = ""
    alias: str | None = None
    family: LoraFamily = LoraFamily.UNKNOWN
    rank: int | None = None
    kind: str = "lora"  # lora, locon, loha, lokr, or what the keys look like
    trigger_words: tuple[str, ...] = ()
    preview: str | None = None  # path of a preview image beside the file
    preview_data: str | None = None  # base64 image embedded in the metadata (ssmd_cover_images)
    has_cover: bool = False  # the metadata embeds a cover image (read on demand into ``preview_data``)
    activation_text: str = ""
    preferred_weight: float = 1.0
    notes: str = ""
    description: str = ""
    mtime: float = 0.0
    size: int = 0
    metadata: dict[str, str] | None = None
    error: str | None = None  # the header could not be read
    sha256: str | None = None
    sshs_hash: str | None = None

    @property
    def short_hash(self) -> str | None:
        """The hash ``Lora hashes`` writes: ``sshs_model_hash`` if present, else the addnet hash (12 hex)."""
        value = self.sshs_hash or self.sha256
        return value[:HASH_LENGTH] if value else None

    def fits(self, family: ModelFamily | None) -> bool | None:
        return self.family.fits(family)
