"""LoRA prompt tags, prompt ↔ picker sync, infotext hashes, families and library records (pure)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from webui.domain.lora import (
    LoraFamily,
    LoraTagError,
    add_lora_tag,
    embedding_names_in,
    family_from_base_model_version,
    format_hashes,
    lora_tags,
    parse_hashes,
    parse_lora_tags,
    rename_lora_tags,
    set_lora_tags,
)
from webui.domain.models import ModelFamily
from webui.registry.hashes import HashCache
from webui.registry.lora import LoraLibrary, family_from_shapes


def test_tag_weights_follow_a1111() -> None:
    specs = parse_lora_tags("a <lora:one> b <lora:two:0.5> <lora:three:0.2:-1> <lyco:four:te=0.3:unet=0.7>")
    assert [(s.name, s.te_weight, s.unet_weight) for s in specs] == [
        ("one", 1.0, 1.0), ("two", 0.5, 0.5), ("three", 0.2, -1.0), ("four", 0.3, 0.7),
    ]  # fmt: skip
    with pytest.raises(LoraTagError, match="not a number"):
        parse_lora_tags("<lora:x:heavy>")
    assert parse_lora_tags("<hypernet:x:1>") == []


def test_prompt_sync_add_reweight_remove_keeps_text() -> None:
    prompt = "a cat, <lora:ink:0.8>, on a mat <lora:glow:1>"
    assert lora_tags(prompt) == [("ink", 0.8), ("glow", 1.0)]
    assert set_lora_tags(prompt, [("ink", 0.8), ("glow", 1.0)]) == prompt  # unchanged: untouched
    assert (
        set_lora_tags(prompt, [("ink", 0.5), ("glow", 1.0)])
        == "a cat, <lora:ink:0.5>, on a mat <lora:glow:1>"
    )
    assert set_lora_tags(prompt, [("glow", 1.0)]) == "a cat, on a mat <lora:glow:1>"
    assert set_lora_tags(prompt, []) == "a cat, on a mat"
    assert set_lora_tags("a cat", [("new", -0.25)]) == "a cat <lora:new:-0.25>"
    assert add_lora_tag("", "x", 1.0) == "<lora:x:1>"
    assert add_lora_tag("p <lora:x:1>", "x", 0.6) == "p <lora:x:0.6>"
    assert (
        rename_lora_tags("p <lora:old:0.5:1> <lora:keep>", {"old": "new"}) == "p <lora:new:0.5:1> <lora:keep>"
    )


def test_hashes_format_and_parse() -> None:
    text = format_hashes([("my:lora,v2", "abcdef0123456789"), ("b", "0123456789abcdef")])
    assert text == "mylorav2: abcdef012345, b: 0123456789ab"
    assert parse_hashes(text) == {"mylorav2": "abcdef012345", "b": "0123456789ab"}
    assert parse_hashes("garbage, x: nothex") == {}


def test_families() -> None:
    assert family_from_base_model_version("sdxl_base_v1-0") is LoraFamily.SDXL
    assert family_from_base_model_version("sd_v1") is LoraFamily.SD1
    assert family_from_base_model_version("sd_v2") is LoraFamily.SD2
    assert family_from_base_model_version(None) is LoraFamily.UNKNOWN
    assert LoraFamily.SDXL.fits(ModelFamily.SD1) is False
    assert LoraFamily.SD1.fits(ModelFamily.SD1_INPAINT) is True
    assert LoraFamily.UNKNOWN.fits(ModelFamily.SD1) is None
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    assert family_from_shapes({key: (8, 768)}) is LoraFamily.SD1
    assert family_from_shapes({key: (8, 1024)}) is LoraFamily.SD2
    assert family_from_shapes({key: (8, 2048)}) is LoraFamily.SDXL
    assert family_from_shapes({"lora_te2_x.lora_down.weight": (8, 1280)}) is LoraFamily.SDXL


def test_embedding_names_match_whole_words_in_order() -> None:
    assert embedding_names_in("a bad-hands, style-x and style", ["style", "style-x", "bad-hands"]) == [
        "bad-hands", "style-x", "style",
    ]  # fmt: skip
    assert embedding_names_in("stylex", ["style"]) == []


def _write_safetensors(path: Path, metadata: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> None:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for key, shape in shapes.items():
        size = 2
        for dim in shape:
            size *= dim
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        struct.pack("<Q", len(raw)) + raw + bytes(range(256)) * (offset // 256) + b"\x01" * (offset % 256)
    )


def test_library_records_sidecar_preview_alias_and_hash(tmp_path: Path) -> None:
    root = tmp_path / "Lora"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    tags = json.dumps({"10_ink": {"inky": 12, "lineart": 30, "cat": 2}})
    _write_safetensors(
        root / "styles" / "ink.safetensors",
        {"ss_output_name": "ink-v2", "ss_tag_frequency": tags, "ss_base_model_version": "sd_v1"},
        {f"{key}.lora_down.weight": (16, 768), f"{key}.lora_up.weight": (320, 16)},
    )
    (root / "styles" / "ink.json").write_text(
        json.dumps({"activation text": "inky", "preferred weight": 0.7, "notes": "nice", "sd version": "SD1"})
    )
    (root / "styles" / "ink.preview.png").write_bytes(b"png")
    library = LoraLibrary(root, HashCache(tmp_path))
    (record,) = library.records()
    assert (record.name, record.group, record.alias) == ("ink", "styles", "ink-v2")
    assert (record.family, record.rank, record.kind) == (LoraFamily.SD1, 16, "lora")
    assert record.trigger_words[:2] == ("lineart", "inky")
    assert (record.activation_text, record.preferred_weight, record.notes) == ("inky", 0.7, "nice")
    assert record.preview and record.preview.endswith("ink.preview.png")
    assert library.find("ink-v2") is record and library.find("styles/ink") is record
    data = (root / "styles" / "ink.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    expected = hashlib.sha256(data[8 + size :]).hexdigest()
    assert library.find_by_hash(expected[:12]) is record
    assert record.sha256 == expected and record.short_hash == expected[:12]
    cache = json.loads((tmp_path / "cache.json").read_text())
    assert cache["hashes-addnet"]["lora/styles/ink"]["sha256"] == expected


def test_many_unread_headers_are_read_by_workers_with_the_same_facts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large library's first scan: the worker processes give exactly what reading here gives, in order,
    for good files and broken ones alike."""
    import os
    import shutil
    import subprocess

    from webui.registry import lora as lora_registry
    from webui.registry.header_cache import HeaderCache
    from webui.services.lora import LORA_FACTS_SCHEMA

    source = Path(__file__).resolve().parents[2] / "models" / "Lora" / "easel-reference-grayscale.safetensors"
    root = tmp_path / "Lora"
    paths = []
    for index in range(120):
        path = root / f"group-{index % 3}" / f"lora-{index:03d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        if index % 10 == 7:
            path.write_bytes(b"not a safetensors file")  # broken files keep their place and their error
        else:
            shutil.copyfile(source, path)
        paths.append(path)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)  # workers even on a one-core machine
    started: list[object] = []
    real_run = subprocess.run

    def counting_run(*args: object, **kwargs: object) -> object:
        started.append(args[0])
        return real_run(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "run", counting_run)
    in_workers = lora_registry.read_facts(paths)
    monkeypatch.undo()
    assert len(started) == 2  # 120 files: two workers (one per 48 unread files, at most one per core)
    assert in_workers == [lora_registry.lora_facts(path) for path in paths]
    assert in_workers[7]["error"].startswith("lora-007.safetensors") and in_workers[0]["family"] == "sd1"

    cache = HeaderCache(tmp_path / "lora-headers.json", schema=LORA_FACTS_SCHEMA)
    library = LoraLibrary(root, HashCache(tmp_path), cache)
    assert len(library.records()) == 120
    assert {record.name: record.error is None for record in library.records()}["lora-017"] is False
