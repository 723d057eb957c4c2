"""A1111-compatible hashes and the on-disk hash cache."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path

import pytest

from webui.registry import hashes
from webui.registry.hashes import (
    HashCache,
    addnet_hash_safetensors,
    legacy_hash,
    sha256_file,
)


def _random_file(path: Path, size: int, seed: int = 0) -> bytes:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    data = bytes((b + i) % 256 for i, b in enumerate(data[:4096])) + data[4096:]
    path.write_bytes(data)
    return data


def _safetensors_bytes(payload: bytes) -> bytes:
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    return struct.pack("<Q", len(raw)) + raw + payload


@pytest.mark.parametrize("chunk", [1, 4096, hashes.MIB])
def test_sha256_file_matches_hashlib(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "m.bin"
    data = _random_file(path, 10_000 if chunk == 1 else 3 * hashes.MIB + 17)
    assert sha256_file(path, chunk=chunk) == hashlib.sha256(data).hexdigest()


def test_legacy_hash_reads_64k_at_1mib(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    data = _random_file(path, 1_200_000)
    expected = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    assert legacy_hash(path) == expected
    assert len(expected) == 8


def test_legacy_hash_missing_file(tmp_path: Path) -> None:
    assert legacy_hash(tmp_path / "nope.ckpt") == "NOFILE"


def test_addnet_hash_covers_only_tensor_data(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 40
    path = tmp_path / "lora.safetensors"
    path.write_bytes(_safetensors_bytes(payload))
    assert addnet_hash_safetensors(path) == hashlib.sha256(payload).hexdigest()
    # The same tensors with different header metadata hash the same.
    other = tmp_path / "other.safetensors"
    header = {
        "__metadata__": {"ss_name": "x"},
        "w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]},
    }
    raw = json.dumps(header).encode()
    other.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    assert addnet_hash_safetensors(other) == addnet_hash_safetensors(path)
    assert addnet_hash_safetensors(path) != sha256_file(path)


# -- HashCache --------------------------------------------------------------------------------------------


def test_cache_get_never_computes(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"abc")
    cache = HashCache(tmp_path / "data")
    assert cache.get("checkpoint", "m.safetensors", model) is None
    assert not cache.path.exists()


def test_cache_persists_in_a1111_layout(tmp_path: Path) -> None:
    model = tmp_path / "sub" / "m.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"hello")
    cache = HashCache(tmp_path)
    value = cache.compute("checkpoint", "sub/m.safetensors", model)
    assert value == hashlib.sha256(b"hello").hexdigest()

    saved = json.loads((tmp_path / "cache.json").read_text())
    entry = saved["hashes"]["checkpoint/sub/m.safetensors"]
    assert entry == {"mtime": os.path.getmtime(model), "size": 5, "sha256": value}

    reopened = HashCache(tmp_path)
    assert reopened.get("checkpoint", "sub/m.safetensors", model) == value


def test_cache_invalidated_when_mtime_changes(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"one")
    cache = HashCache(tmp_path)
    first = cache.compute("checkpoint", "m.safetensors", model)
    model.write_bytes(b"two")
    stat = model.stat()
    os.utime(model, (stat.st_atime, stat.st_mtime + 10))
    assert cache.get("checkpoint", "m.safetensors", model) is None
    second = cache.compute("checkpoint", "m.safetensors", model)
    assert second == hashlib.sha256(b"two").hexdigest() != first
    assert HashCache(tmp_path).get("checkpoint", "m.safetensors", model) == second


def test_cache_lora_uses_addnet_section(tmp_path: Path) -> None:
    payload = b"\x01\x02\x03\x04" * 10
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(_safetensors_bytes(payload))
    cache = HashCache(tmp_path / "data")
    value = cache.compute("lora", "style", lora)
    assert value == hashlib.sha256(payload).hexdigest()
    saved = json.loads(cache.path.read_text())
    assert saved["hashes-addnet"]["lora/style"]["sha256"] == value
    assert "hashes" not in saved


def test_cache_keeps_other_sections(tmp_path: Path) -> None:
    (tmp_path / "cache.json").write_text(json.dumps({"safetensors-metadata": {"lora/x": {"a": 1}}}))
    model = tmp_path / "m.ckpt"
    model.write_bytes(b"x")
    HashCache(tmp_path).compute("checkpoint", "m.ckpt", model)
    saved = json.loads((tmp_path / "cache.json").read_text())
    assert saved["safetensors-metadata"] == {"lora/x": {"a": 1}}
    assert "checkpoint/m.ckpt" in saved["hashes"]


def test_cache_ignores_a_damaged_file(tmp_path: Path) -> None:
    (tmp_path / "cache.json").write_text("{not json")
    model = tmp_path / "m.ckpt"
    model.write_bytes(b"x")
    cache = HashCache(tmp_path)
    assert cache.get("checkpoint", "m.ckpt", model) is None
    cache.compute("checkpoint", "m.ckpt", model)
    assert json.loads((tmp_path / "cache.json").read_text())["hashes"]


def test_cache_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = tmp_path / "one.ckpt", tmp_path / "two.ckpt"
    one.write_bytes(b"1")
    two.write_bytes(b"2")
    data_dir = tmp_path / "data"
    cache = HashCache(data_dir)
    cache.compute("checkpoint", "one.ckpt", one)
    before = cache.path.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(hashes.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        cache.compute("checkpoint", "two.ckpt", two)
    assert cache.path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in data_dir.iterdir()) == ["cache.json"]  # no temp file left


def test_cache_concurrent_compute(tmp_path: Path) -> None:
    files = []
    for i in range(16):
        path = tmp_path / f"m{i}.ckpt"
        path.write_bytes(str(i).encode() * 1000)
        files.append(path)
    cache = HashCache(tmp_path / "data")
    errors: list[BaseException] = []

    def work(path: Path) -> None:
        try:
            for _ in range(3):
                cache.compute("checkpoint", path.name, path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(path,)) for path in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    saved = json.loads(cache.path.read_text())["hashes"]
    assert len(saved) == 16
    for path in files:
        assert saved[f"checkpoint/{path.name}"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


class _Record:
    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = str(path)


def test_background_hasher(tmp_path: Path) -> None:
    records = []
    for i in range(4):
        path = tmp_path / f"m{i}.safetensors"
        path.write_bytes(bytes([i]) * 5000)
        records.append(_Record(path.name, path))
    records.append(_Record("gone.safetensors", tmp_path / "gone.safetensors"))  # skipped, not fatal
    cache = HashCache(tmp_path / "data")
    cache.compute("checkpoint", records[0].name, records[0].path)  # already known: not reported again
    done: dict[str, str] = {}
    thread = cache.start_background(records, on_done=lambda name, value: done.__setitem__(name, value))
    assert thread.daemon
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert sorted(done) == ["m1.safetensors", "m2.safetensors", "m3.safetensors"]
    for record in records[:4]:
        assert cache.get("checkpoint", record.name, record.path) == sha256_file(record.path)


def test_cache_invalidated_when_a_file_is_replaced_keeping_its_mtime(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"one")
    cache = HashCache(tmp_path)
    first = cache.compute("checkpoint", "m.safetensors", model)
    stat = model.stat()
    model.write_bytes(b"another model")  # a copy that keeps times (cp -p, rsync -t)
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.get("checkpoint", "m.safetensors", model) is None
    assert cache.compute("checkpoint", "m.safetensors", model) == hashlib.sha256(b"another model").hexdigest()
    assert cache.compute("checkpoint", "m.safetensors", model) != first


def test_an_a1111_entry_without_size_is_trusted_on_its_mtime(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"one")
    entry = {"mtime": os.path.getmtime(model), "sha256": "ab" * 32}
    (tmp_path / "cache.json").write_text(json.dumps({"hashes": {"checkpoint/m.safetensors": entry}}))
    assert HashCache(tmp_path).get("checkpoint", "m.safetensors", model) == "ab" * 32
