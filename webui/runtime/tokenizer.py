"""The CLIP BPE tokenizer, built offline from the merges that ship inside the open_clip_torch wheel.

Every Stable Diffusion family (SD1, SD2, SDXL) uses the same 49408-token CLIP vocabulary; only the padding
token differs: SD1 and SDXL's first text encoder pad with ``<|endoftext|>``, SD2 and SDXL's second text
encoder pad with ``!`` (id 0). The vocabulary is derived from the merges the way CLIP derives it:

- the 256 byte-level unicode symbols, then the same 256 with the end-of-word suffix ``</w>``;
- one token per merge, in file order (the file's lines 1 .. 48894; line 0 is a version header);
- ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

The files transformers reads (``vocab.json``, ``merges.txt`` and the two config files) are written once
into a cache folder chosen by the caller, atomically, so concurrent first uses cannot see half a folder.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import threading
from functools import cache
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
SD2_PAD_TOKEN = "!"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77

_MERGES_RESOURCE = ("open_clip", "bpe_simple_vocab_16e6.txt.gz")
_MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2  # 48894
_FILE_NAMES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")

_lock = threading.Lock()


def byte_symbols() -> list[str]:
    """The 256 unicode stand-ins for bytes 0..255 used by byte-level BPE, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first (in byte order); the remaining bytes are
    mapped, in byte order, to code points from 256 upwards, and follow.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    kept = set(printable)
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in kept:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return [mapping[byte] for byte in printable] + [mapping[byte] for byte in range(256) if byte not in kept]


def _read_merges() -> list[str]:
    package, name = _MERGES_RESOURCE
    data = resources.files(package).joinpath(name).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = lines[1 : 1 + _MERGE_COUNT]
    if len(merges) != _MERGE_COUNT or any(len(line.split()) != 2 for line in merges):
        raise RuntimeError(f"unexpected CLIP merges file in {package}/{name}: expected {_MERGE_COUNT} merges")
    return merges


def build_vocab(merges: list[str]) -> dict[str, int]:
    """Token → id for CLIP, from the merge list (see the module docstring for the order)."""
    symbols = byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab


def write_tokenizer_files(target_dir: Path, pad_token: str = EOS_TOKEN) -> None:
    """Write the CLIP tokenizer files into ``target_dir`` (created if needed), e.g. a diffusers folder."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    merges = _read_merges()
    vocab = build_vocab(merges)
    special = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
    }
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    (target_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (target_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (target_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (target_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")


def ensure_tokenizer_files(cache_dir: Path) -> Path:
    """Make sure ``cache_dir`` holds the tokenizer files; write them atomically the first time."""
    cache_dir = Path(cache_dir)
    if all((cache_dir / name).is_file() for name in _FILE_NAMES):
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}-", dir=cache_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp creates it private; the cache is an ordinary data folder
        write_tokenizer_files(staging)
        try:
            os.replace(staging, cache_dir)  # atomic when cache_dir is absent or an empty folder
        except OSError:
            # Another process finished first (a non-empty folder cannot be replaced); use its files.
            if not all((cache_dir / name).is_file() for name in _FILE_NAMES):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache_dir


def clip_tokenizer(cache_dir: Path, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """A CLIP tokenizer whose files live in ``cache_dir``, one shared instance per (folder, pad token).

    ``pad_token``: ``"<|endoftext|>"`` for SD1 and SDXL's ``text_encoder``; ``"!"`` for SD2 and SDXL's
    ``text_encoder_2``. Nothing is downloaded.
    """
    return _cached_tokenizer(Path(cache_dir).resolve(), pad_token)


@cache
def _cached_tokenizer(cache_dir: Path, pad_token: str) -> CLIPTokenizer:
    with _lock:
        ensure_tokenizer_files(cache_dir)
        tokenizer = CLIPTokenizer.from_pretrained(str(cache_dir), pad_token=pad_token, local_files_only=True)
    if len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(
            f"CLIP tokenizer in {cache_dir} has {len(tokenizer)} tokens, expected {VOCAB_SIZE}"
        )
    return tokenizer
