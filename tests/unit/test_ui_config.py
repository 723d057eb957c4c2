"""ui-config.json: A1111 keys, unknown keys kept, atomic single-writer saves, a corrupt file survived."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from webui.services.ui_config import UiConfigStore


def _read(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_round_trip_with_a1111_keys_and_unknown_keys_kept(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"extras/Upscaler 1/value": "Lanczos", "txt2img/Width/value": 512}))
    store = UiConfigStore(path)
    assert store.get("txt2img/Width/value") == 512
    store.update({"txt2img/Width/value": 640, "txt2img/Prompt/value": "a fox"}, now=True)
    assert _read(path) == {
        "extras/Upscaler 1/value": "Lanczos",
        "txt2img/Width/value": 640,
        "txt2img/Prompt/value": "a fox",
    }
    assert UiConfigStore(path).snapshot() == _read(path)  # what a restart reads


def test_writes_are_delayed_and_merged_into_the_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    store = UiConfigStore(path, write_delay=60)
    store.update({"txt2img/Prompt/value": "a"})
    store.update({"txt2img/Prompt/value": "a fox"})  # typing: one write later, not one per key
    assert not path.exists()
    # A key edited by hand while Easel runs is not overwritten by Easel's next write.
    path.write_text(json.dumps({"txt2img/Steps/maximum": 300}))
    store.flush()
    assert _read(path) == {"txt2img/Steps/maximum": 300, "txt2img/Prompt/value": "a fox"}


def test_the_delayed_write_happens(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    store = UiConfigStore(path, write_delay=0.01)
    written = threading.Event()
    original = store._write

    def spy(data: dict[str, object]) -> None:
        original(data)
        written.set()

    store._write = spy  # type: ignore[method-assign]
    store.update({"img2img/Seed/value": 7})
    assert written.wait(10)
    assert _read(path) == {"img2img/Seed/value": 7}


def test_add_defaults_keeps_what_the_user_wrote(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"txt2img/Width/maximum": 4096}))
    store = UiConfigStore(path)
    store.add_defaults({"txt2img/Width/maximum": 2048, "txt2img/Width/minimum": 64})
    assert _read(path) == {"txt2img/Width/maximum": 4096, "txt2img/Width/minimum": 64}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '"text"'])
def test_a_corrupt_file_is_kept_aside_and_defaults_used(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ui-config.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        store = UiConfigStore(path)
    assert store.snapshot() == {}
    assert (tmp_path / "ui-config.json.bad").read_text() == content
    assert "unreadable" in caplog.text
    store.update({"txt2img/Width/value": 64}, now=True)
    assert _read(path) == {"txt2img/Width/value": 64}


def test_the_file_is_an_ordinary_user_file_and_no_temp_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    UiConfigStore(path).update({"txt2img/Width/value": 64}, now=True)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["ui-config.json"]


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ui-config.json"
    store = UiConfigStore(path, write_delay=0.001)

    def writer(index: int) -> None:
        for step in range(20):
            store.update({f"txt2img/Field {index}/value": step})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.flush()
    assert _read(path) == {f"txt2img/Field {i}/value": 19 for i in range(4)}


def test_an_unwritable_folder_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = UiConfigStore(blocker / "ui-config.json")  # its folder cannot be created
    with caplog.at_level(logging.WARNING):
        store.update({"txt2img/Width/value": 64}, now=True)
    assert store.get("txt2img/Width/value") == 64
    assert "could not save" in caplog.text
