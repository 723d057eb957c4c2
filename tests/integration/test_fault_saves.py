"""Faults while saving: a process killed with SIGKILL mid-save, and a disk that fills up.

After a kill, the numbered files in ``outputs/`` are complete images with their parameters, the temp file the
killed save left is removed at the next start (only Easel's temp names, never the user's files, never a save
another live process is making), and numbering continues after the highest file.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from webui.metadata.image_io import read_infotext, save_image_atomic, sweep_temp_files

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")

ROOT = Path(__file__).resolve().parents[2]

# A child that saves PNGs with parameters in a loop. With BLOCK set, its first save stops inside the write
# (after half the bytes) and waits to be killed: the worst moment for a crash.
_SAVER = textwrap.dedent(
    """
    import io, os, sys, time
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from webui.metadata.image_io import encode_image, save_image_atomic

    folder, block = Path(sys.argv[1]), sys.argv[2] == "block"
    rng = np.random.default_rng(int(sys.argv[3]))
    if block:
        def stuck(fd):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)  # the kill finds a half-written temp file
            (folder / "saving").touch()
            time.sleep(600)
        os.fsync = stuck
    seed = 0
    while True:
        pixels = rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)
        data = encode_image(Image.fromarray(pixels), f"a cat\\nSteps: 1, Seed: {seed}", "png")
        save_image_atomic(data, folder, seed, "png")
        seed += 1
    """
)


def _start_saver(folder: Path, mode: str, seed: int = 0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", _SAVER, str(folder), mode, str(seed)], env=env, cwd=ROOT)


def _wait_for(condition, process: subprocess.Popen[bytes], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert process.poll() is None, f"the saver exited early while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _numbered(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name[:5].isdigit())


def _assert_complete(folder: Path) -> list[int]:
    numbers = []
    for path in _numbered(folder):
        assert path.stat().st_size > 0, f"{path.name} is empty"
        with Image.open(path) as image:
            image.load()  # a truncated file fails here
        infotext, _ = read_infotext(path)
        assert infotext is not None and "Seed:" in infotext, f"{path.name} lost its parameters"
        numbers.append(int(path.name[:5]))
    assert len(numbers) == len(set(numbers)), "two files share a number"
    return numbers


def test_kill_mid_write_leaves_a_temp_file_that_the_next_start_removes(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "txt2img-images" / "2026-01-01"
    save_image_atomic(b"\x89PNG earlier image", folder, 7, "png")  # an existing 00000
    saver = _start_saver(folder, "block")
    try:
        _wait_for((folder / "saving").exists, saver, "the save to start writing")
        # While the save is alive, its temp file is locked: a sweep (another Easel starting) keeps it.
        temps = [p for p in folder.iterdir() if p.name.startswith(".easel-tmp-")]
        assert len(temps) == 1
        assert sweep_temp_files(tmp_path / "outputs") == []
        assert temps[0].exists()
        saver.send_signal(signal.SIGKILL)
        saver.wait(timeout=30)
    finally:
        if saver.poll() is None:
            saver.kill()
    (folder / "saving").unlink()
    assert temps[0].exists() and [p.name for p in _numbered(folder)] == ["00000-7.png"]

    # The user's own files that merely look alike stay.
    keep = [folder / "notes.tmp", folder / ".easel-tmp-notes.txt", folder / "easel-tmp-abcdefgh.png"]
    for path in keep:
        path.write_text("mine")

    from webui.container import build_services  # a restart of the server
    from webui.settings import Settings

    services = build_services(Settings(data_dir=tmp_path, preload_model=False))
    services.generation.shutdown()

    assert not temps[0].exists()
    assert all(path.read_text() == "mine" for path in keep)
    assert save_image_atomic(b"next", folder, 8, "png").name == "00001-8.png"


def test_random_kills_during_saves_lose_nothing_and_numbering_continues(tmp_path: Path) -> None:
    folder = tmp_path / "outputs"
    chooser = random.Random(19)
    for trial in range(4):
        before = len(_numbered(folder)) if folder.exists() else 0
        wanted = before + chooser.randint(2, 6)
        saver = _start_saver(folder, "loop", seed=trial)
        try:
            _wait_for(lambda w=wanted: folder.exists() and len(_numbered(folder)) >= w, saver, "saves")
            time.sleep(chooser.uniform(0, 0.05))  # somewhere inside the next save
            saver.send_signal(signal.SIGKILL)
            saver.wait(timeout=30)
        finally:
            if saver.poll() is None:
                saver.kill()
        sweep_temp_files(folder)
        assert not [p for p in folder.iterdir() if not p.name[:5].isdigit()], "a temp or partial file remains"
        numbers = _assert_complete(folder)
        assert numbers == list(range(len(numbers))), "numbering has a gap or an overwrite"
        path = save_image_atomic(b"\x89PNG after the kill", folder, 1, "png")
        assert path.name == f"{len(numbers):05d}-1.png"
        path.unlink()  # keep the folder to the saver's images only


def test_disk_full_midway_leaves_nothing_and_names_the_folder(tmp_path: Path, monkeypatch) -> None:
    import errno

    folder = tmp_path / "outputs"
    save_image_atomic(b"first", folder, 1, "png")

    def full(fd: int) -> None:  # the data is written, flushing it to the disk finds no room
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(OSError) as caught:
        save_image_atomic(b"x" * 100_000, folder, 2, "png")
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(folder)
    assert "full" in str(caught.value)
    assert sorted(p.name for p in folder.iterdir()) == ["00000-1.png"]
    monkeypatch.undo()
    assert save_image_atomic(b"second", folder, 2, "png").name == "00001-2.png"


def test_folder_saves_cut_short_are_cleared_and_a_set_aside_checkpoint_comes_back(tmp_path: Path) -> None:
    """A DreamBooth of a diffusers folder is built in a hidden, locked folder and renamed into place; a
    resumed run's sets the stop's folder aside first. After a kill, the next start removes what was being
    built and puts a set-aside folder back when nothing took its name; a live save (locked) is kept."""
    from webui.metadata.image_io import (
        PARTIAL_FOLDER_PREFIX,
        REPLACED_FOLDER_PREFIX,
        locked_temp_folder,
        sweep_partial_folders,
    )

    root = tmp_path / "Stable-diffusion"
    root.mkdir()
    killed = root / f"{PARTIAL_FOLDER_PREFIX}abc"
    (killed / "unet").mkdir(parents=True)
    (killed / "unet" / "config.json").write_text("{}")
    lost = root / f"{REPLACED_FOLDER_PREFIX}one"  # killed after the old folder was set aside
    (lost / "zwx-db" / "unet").mkdir(parents=True)
    (lost / "zwx-db" / "model_index.json").write_text("{}")
    stale = root / f"{REPLACED_FOLDER_PREFIX}two"  # killed after the new folder was in place
    (stale / "other").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "other" / "model_index.json").write_text('{"new": 1}')
    (root / ".my-own-hidden").mkdir()
    live, fd = locked_temp_folder(root, PARTIAL_FOLDER_PREFIX)
    try:
        swept = sweep_partial_folders(root)
        assert live.is_dir()  # its save still runs
    finally:
        os.close(fd)
    assert not killed.exists() and not lost.exists() and not stale.exists()
    assert (root / "zwx-db" / "model_index.json").read_text() == "{}"  # the user's checkpoint is back
    assert (root / "other" / "model_index.json").read_text() == '{"new": 1}'
    assert (root / ".my-own-hidden").is_dir()
    assert set(swept) == {killed, lost, stale, root / "zwx-db"}
    assert sweep_partial_folders(root) == [live]  # unlocked now: cleared at the next start
