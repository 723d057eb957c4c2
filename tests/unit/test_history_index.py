"""The image-history index: kept current on save and by sync, searched, paged, favourites, trash."""

from __future__ import annotations

import os
import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from webui.metadata.image_io import encode_image
from webui.services.history import SCHEMA_VERSION, HistoryQuery, HistoryService
from webui.services.history_records import created_time, fields_from_infotext, image_kind


def infotext(
    prompt: str,
    *,
    seed: int = 1,
    model: str = "tiny",
    sampler: str = "Euler a",
    size: str = "64x64",
    extra: str = "",
) -> str:
    return (
        f"{prompt}\nNegative prompt: blurry\n"
        f"Steps: 4, Sampler: {sampler}, CFG scale: 7, Seed: {seed}, Size: {size}, Model: {model}{extra}"
    )


def write_image(
    path: Path, text: str | None, *, size: tuple[int, int] = (64, 64), when: datetime | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower()
    path.write_bytes(encode_image(Image.new("RGB", size, (40, 90, 160)), text, fmt))  # type: ignore[arg-type]
    if when is not None:
        stamp = when.timestamp()
        os.utime(path, (stamp, stamp))
    return path


@pytest.fixture(params=[True, False], ids=["fts5", "like"])
def history(request: pytest.FixtureRequest, tmp_path: Path) -> HistoryService:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    service = HistoryService(
        tmp_path / "cache" / "history.sqlite3", outputs, tmp_path / "cache" / "thumbs", use_fts=request.param
    )
    yield service
    service.close()


def paths(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [item.path for item in page.items]


# --------------------------------------------------------------------------------------------- parsing


def test_fields_from_infotext_reads_prompt_seed_model_sampler_and_loras() -> None:
    text = infotext(
        "a red fox <lora:fox_style:0.8>",
        seed=42,
        sampler="DPM++ 2M Karras",
        extra=', Lora hashes: "fox_style: 0123456789ab, ink: abcdefabcdef"',
    )
    fields = fields_from_infotext(text)
    assert fields["prompt"] == "a red fox <lora:fox_style:0.8>"
    assert fields["negative_prompt"] == "blurry"
    assert fields["seed"] == 42
    assert fields["model"] == "tiny"
    assert fields["sampler"] == "DPM++ 2M"  # the pre-1.9 combined name is split
    assert fields["loras"].split("\n") == ["fox_style", "ink"]
    assert fields_from_infotext("")["prompt"] == ""


def test_kind_and_created_from_the_folder() -> None:
    assert image_kind("txt2img-images/2024-05-01/00001-1.png") == "txt2img"
    assert image_kind("img2img-images/2024-05-01/00001-1.png") == "img2img"
    assert image_kind("extras-images/2024-05-01/00000-0.png") == "extras"
    assert image_kind("txt2img-grids/2024-05-01/grid-0001.png") == "grid"
    assert image_kind("txt2img-images/2024-05-01/detected_maps/00000-1.png") == "controlnet"
    assert image_kind("loose.png") == "outputs"
    same_day = datetime(2024, 5, 1, 15, 30).timestamp()
    assert created_time("txt2img-images/2024-05-01/a.png", same_day) == same_day
    copied_later = datetime(2025, 1, 2, 9, 0).timestamp()
    assert created_time("txt2img-images/2024-05-01/a.png", copied_later) == datetime(2024, 5, 1).timestamp()
    assert created_time("mine/a.png", copied_later) == copied_later


# ------------------------------------------------------------------------------------------- keeping current


def test_add_saved_indexes_without_a_sync(history: HistoryService) -> None:
    path = write_image(history.outputs_root / "txt2img-images/2024-05-01/00000-7.png", None)
    history.add_saved(path, infotext("a lighthouse at dusk", seed=7), (64, 64))
    page = history.search(HistoryQuery())
    assert page.total == 1
    item = page.items[0]
    assert (item.path, item.prompt, item.seed, item.kind) == (
        "txt2img-images/2024-05-01/00000-7.png",
        "a lighthouse at dusk",
        7,
        "txt2img",
    )
    assert history.search(HistoryQuery(text="lighthouse")).total == 1
    # A later sync sees the same (size, mtime) and leaves the row alone.
    report = history.sync()
    assert report is not None and (report.added, report.updated, report.unchanged) == (0, 0, 1)


def test_add_saved_ignores_files_outside_the_outputs_folder(history: HistoryService, tmp_path: Path) -> None:
    path = write_image(tmp_path / "elsewhere.png", infotext("x"))
    history.add_saved(path, infotext("x"), (64, 64))
    assert history.count() == 0


def test_sync_adds_files_written_behind_its_back_with_their_infotext(history: HistoryService) -> None:
    root = history.outputs_root
    write_image(root / "txt2img-images/2024-05-01/00000-11.png", infotext("a castle in fog", seed=11))
    write_image(
        root / "img2img-images/2024-05-02/00000-12.jpg", infotext("a cat on a sofa", seed=12), size=(80, 48)
    )
    write_image(root / "extras-images/2024-05-03/00000-0.webp", infotext("an old map", seed=13))
    write_image(root / "my folder/deeper/plain.png", None)
    (root / "notes.txt").write_text("not an image")
    write_image(root / ".trash/txt2img-images/old.png", infotext("trashed"))
    report = history.sync()
    assert report is not None and report.added == 4
    jpg = history.get("img2img-images/2024-05-02/00000-12.jpg")
    assert jpg is not None
    assert (jpg.prompt, jpg.seed, jpg.width, jpg.height, jpg.kind) == (
        "a cat on a sofa",
        12,
        80,
        48,
        "img2img",
    )
    webp = history.get("extras-images/2024-05-03/00000-0.webp")
    assert webp is not None and webp.prompt == "an old map"
    plain = history.get("my folder/deeper/plain.png")
    assert plain is not None and plain.prompt == "" and plain.infotext == ""
    assert history.search(HistoryQuery(text="trashed")).total == 0


def test_sync_removes_deleted_files_and_reparses_changed_ones(history: HistoryService) -> None:
    root = history.outputs_root
    keep = write_image(root / "txt2img-images/2024-05-01/00000-1.png", infotext("first version"))
    gone = write_image(root / "txt2img-images/2024-05-01/00001-2.png", infotext("to be removed"))
    history.sync()
    gone.unlink()
    write_image(keep, infotext("second version with a hat"), size=(96, 64))
    stamp = keep.stat().st_mtime + 5  # a new mtime, as a rewrite would give
    os.utime(keep, (stamp, stamp))
    report = history.sync()
    assert report is not None and (report.removed, report.updated, report.added) == (1, 1, 0)
    assert history.get(gone.relative_to(root).as_posix()) is None
    item = history.get("txt2img-images/2024-05-01/00000-1.png")
    assert item is not None and item.prompt == "second version with a hat" and item.width == 96
    assert history.search(HistoryQuery(text="first")).total == 0
    assert history.search(HistoryQuery(text="hat")).total == 1


def test_unreadable_file_is_listed_without_parameters(history: HistoryService) -> None:
    broken = history.outputs_root / "txt2img-images/2024-05-01/broken.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a png")
    report = history.sync()
    assert report is not None and report.added == 1
    item = history.get("txt2img-images/2024-05-01/broken.png")
    assert item is not None and item.width is None
    assert history.thumbnail(item.path) is None
    assert history.sync().unchanged == 1  # type: ignore[union-attr]  # not re-read every time


def test_sync_without_waiting_skips_when_one_is_running(history: HistoryService) -> None:
    with history._sync_lock:
        assert history.sync(wait=False) is None


# --------------------------------------------------------------------------------------------- favourites


def test_favourites_survive_sync_and_reindexing(history: HistoryService) -> None:
    path = write_image(history.outputs_root / "txt2img-images/2024-05-01/00000-1.png", infotext("star"))
    history.sync()
    history.set_favourite("txt2img-images/2024-05-01/00000-1.png", True)
    write_image(path, infotext("star, changed"))
    stamp = path.stat().st_mtime + 5
    os.utime(path, (stamp, stamp))
    history.sync()
    item = history.get("txt2img-images/2024-05-01/00000-1.png")
    assert item is not None and item.favourite and item.prompt == "star, changed"
    # Gone and back (moved away and returned by hand): still a favourite.
    moved = path.with_name("moved.tmp")
    path.rename(moved)
    history.sync()
    moved.rename(path)
    history.sync()
    assert history.search(HistoryQuery(favourite=True)).total == 1
    history.set_favourite("txt2img-images/2024-05-01/00000-1.png", False)
    assert history.search(HistoryQuery(favourite=True)).total == 0


def test_schema_change_rebuilds_the_index_and_keeps_favourites(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    write_image(outputs / "txt2img-images/2024-05-01/00000-1.png", infotext("kept"))
    db = tmp_path / "history.sqlite3"
    first = HistoryService(db, outputs, tmp_path / "thumbs")
    first.sync()
    first.set_favourite("txt2img-images/2024-05-01/00000-1.png", True)
    first._conn.execute("PRAGMA user_version = 0")  # as an older Easel wrote it
    first._conn.execute("ALTER TABLE images ADD COLUMN old_column TEXT")
    first.close()
    second = HistoryService(db, outputs, tmp_path / "thumbs")
    assert second._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert second.count() == 0  # rebuilt empty ...
    second.sync()  # ... and refilled from the files
    item = second.get("txt2img-images/2024-05-01/00000-1.png")
    assert item is not None and item.favourite and item.prompt == "kept"
    second.close()


def test_corrupt_database_is_rebuilt_not_fatal(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    write_image(outputs / "txt2img-images/2024-05-01/00000-1.png", infotext("survivor"))
    db = tmp_path / "history.sqlite3"
    db.write_bytes(b"this is not a database at all" * 100)
    service = HistoryService(db, outputs, tmp_path / "thumbs")
    service.sync()
    assert service.search(HistoryQuery(text="survivor")).total == 1
    service.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# --------------------------------------------------------------------------------------------- trash


def test_delete_moves_to_trash_and_restore_puts_it_back(history: HistoryService) -> None:
    root = history.outputs_root
    rel = "txt2img-images/2024-05-01/00000-1.png"
    original = write_image(root / rel, infotext("a blue bird"))
    history.sync()
    history.set_favourite(rel, True)
    trash_path = history.delete(rel)
    assert trash_path == f".trash/{rel}"
    assert not original.exists() and (root / trash_path).is_file()
    assert history.get(rel) is None
    assert history.sync().added == 0  # type: ignore[union-attr]  # the trash is not indexed
    assert [item.original_path for item in history.trash_items()] == [rel]
    restored = history.restore(trash_path)
    assert restored == rel and original.is_file() and not (root / trash_path).exists()
    item = history.get(rel)
    assert item is not None and item.prompt == "a blue bird" and item.favourite
    assert history.trash_items() == []


def test_trash_and_restore_never_overwrite(history: HistoryService) -> None:
    root = history.outputs_root
    rel = "txt2img-images/2024-05-01/00000-1.png"
    write_image(root / rel, infotext("first"))
    history.sync()
    first_trash = history.delete(rel)
    write_image(root / rel, infotext("second"))  # a new image takes the same name
    history.sync()
    second_trash = history.delete(rel)
    assert second_trash == ".trash/txt2img-images/2024-05-01/00000-1 (2).png"
    assert history.get(rel) is None
    # Both trashed files keep their own content.
    assert "first" in Image.open(root / first_trash).info["parameters"]
    assert "second" in Image.open(root / second_trash).info["parameters"]
    write_image(root / rel, infotext("third"))  # and again a new image under the original name
    history.sync()
    restored = history.restore(first_trash)
    assert restored == "txt2img-images/2024-05-01/00000-1 (2).png"
    assert "third" in Image.open(root / rel).info["parameters"]
    assert "first" in Image.open(root / restored).info["parameters"]
    assert history.get(restored).prompt == "first"  # type: ignore[union-attr]


def test_trash_rejects_paths_outside_the_outputs_folder(history: HistoryService) -> None:
    with pytest.raises(ValueError):
        history.delete("../escape.png")
    with pytest.raises(ValueError):
        history.restore("txt2img-images/not-in-trash.png")
    with pytest.raises(FileNotFoundError):
        history.delete("txt2img-images/missing.png")


def test_files_put_in_the_trash_by_hand_can_be_restored(history: HistoryService) -> None:
    write_image(history.outputs_root / ".trash/txt2img-images/2024-05-01/x.png", infotext("by hand"))
    [item] = history.trash_items()
    assert item.original_path == "txt2img-images/2024-05-01/x.png"
    assert history.restore(item.trash_path) == "txt2img-images/2024-05-01/x.png"
    assert history.search(HistoryQuery(text="hand")).total == 1


# --------------------------------------------------------------------------------------------- search


@pytest.fixture
def library(history: HistoryService) -> HistoryService:
    root = history.outputs_root
    base = datetime(2024, 5, 1, 12, 0)
    specs = [
        ("a red fox in snow <lora:fox_style:0.7>", "tiny", "Euler a", (64, 64)),
        ("a blue whale", "tiny", "DPM++ 2M", (64, 64)),
        ("portrait of a fox", "other", "Euler a", (96, 64)),
        ("foxglove flowers", "other", "DDIM", (64, 64)),
        ("100% pure_text", "tiny", "Euler a", (64, 64)),
    ]
    for i, (prompt, model, sampler, size) in enumerate(specs):
        when = base + timedelta(days=i)
        rel = f"txt2img-images/{when.date().isoformat()}/{i:05d}-{i}.png"
        text = infotext(prompt, seed=i, model=model, sampler=sampler, size=f"{size[0]}x{size[1]}")
        write_image(root / rel, text, size=size, when=when)
    history.sync()
    return history


def test_newest_first_and_paging(library: HistoryService) -> None:
    first = library.search(HistoryQuery(page=1, page_size=2))
    second = library.search(HistoryQuery(page=2, page_size=2))
    third = library.search(HistoryQuery(page=3, page_size=2))
    assert first.total == 5 and first.pages == 3
    seeds = [item.seed for page in (first, second, third) for item in page.items]
    assert seeds == [4, 3, 2, 1, 0]
    assert library.search(HistoryQuery(page=4, page_size=2)).items == []


def test_text_search_matches_prompt_words(library: HistoryService) -> None:
    assert sorted(i.seed for i in library.search(HistoryQuery(text="fox")).items) == [
        0,
        2,
        3,
    ]  # foxglove: prefix
    assert [i.seed for i in library.search(HistoryQuery(text="fox snow")).items] == [0]
    assert [i.seed for i in library.search(HistoryQuery(text="WHALE")).items] == [1]
    assert library.search(HistoryQuery(text="negative blurry")).total == 0  # not the negative prompt
    assert library.search(HistoryQuery(text="zebra")).total == 0
    # Punctuation and LIKE/FTS syntax in the query are plain text, never an error.
    assert library.search(HistoryQuery(text='"(((')).total >= 0
    assert [i.seed for i in library.search(HistoryQuery(text="100%")).items] == [4]


def test_filters(library: HistoryService) -> None:
    def seeds(**kw: object) -> list[int]:
        return sorted(i.seed for i in library.search(HistoryQuery(**kw)).items)  # type: ignore[arg-type, misc]

    assert seeds(model="other") == [2, 3]
    assert seeds(sampler="Euler a") == [0, 2, 4]
    assert seeds(lora="fox_style") == [0]
    assert seeds(lora="fox") == []  # a LoRA name matches whole, not as a substring
    assert seeds(size="96x64") == [2]
    assert seeds(date_from=date(2024, 5, 2), date_to=date(2024, 5, 3)) == [1, 2]
    assert seeds(date_from=date(2024, 5, 5)) == [4]
    assert seeds(text="fox", model="other", sampler="Euler a") == [2]
    assert seeds(date_from=date(1, 1, 1), date_to=date(9999, 12, 31)) == [0, 1, 2, 3, 4]  # no overflow
    facets = library.facets()
    assert facets.models == ["other", "tiny"]
    assert facets.loras == ["fox_style"]
    assert set(facets.sizes) == {"64x64", "96x64"}
    assert "DDIM" in facets.samplers


def test_query_validation() -> None:
    with pytest.raises(ValueError, match="page"):
        HistoryQuery(page=0)
    with pytest.raises(ValueError, match="page_size"):
        HistoryQuery(page_size=10_000)
    with pytest.raises(ValueError, match="size"):
        HistoryQuery(size="big")
    with pytest.raises(ValueError, match="after"):
        HistoryQuery(date_from=date(2024, 2, 1), date_to=date(2024, 1, 1))


def test_thumbnails_are_small_and_cached(history: HistoryService) -> None:
    rel = "txt2img-images/2024-05-01/00000-1.png"
    write_image(history.outputs_root / rel, infotext("big"), size=(1024, 512))
    history.sync()
    thumb = history.thumbnail(rel)
    assert thumb is not None and thumb.is_relative_to(history.thumbnails_dir)
    with Image.open(thumb) as image:
        assert max(image.size) == 256 and image.format == "WEBP"
    stamp = thumb.stat().st_mtime_ns
    assert history.thumbnail(rel) == thumb and thumb.stat().st_mtime_ns == stamp


def test_sync_prunes_thumbnails_of_gone_and_changed_images_only(history: HistoryService) -> None:
    kept, changed, gone, trashed = (f"txt2img-images/2024-05-01/0000{i}-{i}.png" for i in range(4))
    for rel in (kept, changed, gone, trashed):
        write_image(history.outputs_root / rel, infotext(rel), size=(96, 64))
    history.sync()
    thumbs = {rel: history.thumbnail(rel) for rel in (kept, changed, gone, trashed)}
    in_trash = history.delete(trashed)
    trash_thumb = history.thumbnail(in_trash)
    (history.outputs_root / gone).unlink()
    path = history.outputs_root / changed
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    old = [thumbs[rel] for rel in (kept, changed, gone, trashed)] + [trash_thumb]
    for thumb in old:
        assert thumb is not None
        os.utime(thumb, (1, 1))  # made before this sync
    leftover = history.thumbnails_dir / "ab" / "crashed-save.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"x")
    os.utime(leftover, (1, 1))
    fresh = history.thumbnails_dir / "cd" / "drawn-meanwhile.webp"  # newer than the sync's start
    fresh.parent.mkdir(parents=True, exist_ok=True)
    fresh.write_bytes(b"x")
    os.utime(fresh, (4_000_000_000, 4_000_000_000))

    report = history.sync()

    assert report is not None and report.pruned == 4  # changed, gone, trashed-original, the temp file
    assert thumbs[kept] is not None and thumbs[kept].exists()
    assert trash_thumb is not None and trash_thumb.exists()  # the trash view still shows it
    assert fresh.exists()
    assert not any(thumbs[rel].exists() for rel in (changed, gone, trashed))  # type: ignore[union-attr]
    assert not leftover.exists()
    assert history.thumbnail(changed) is not None  # made again for the new version
