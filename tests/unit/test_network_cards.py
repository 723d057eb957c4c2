"""Extra-network cards without a browser: badges and the family warning, prompt toggling, the A1111 sidecar,
previews and their thumbnails, and the header cache that keeps large libraries fast."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.fixtures.real_layouts import write_header_only
from webui.domain.lora import LoraFamily, LoraRecord
from webui.domain.models import ModelFamily
from webui.registry import lora as lora_registry
from webui.registry import scanner
from webui.registry.hashes import HashCache
from webui.registry.header_cache import HeaderCache
from webui.registry.lora import LoraLibrary
from webui.services.lora import NetworkService
from webui.services.network_cards import (
    EMBEDDING,
    LORA,
    THUMBNAIL_SIZE,
    CardError,
    NetworkCard,
    ThumbnailCache,
    card_from_lora,
    filter_cards,
    toggle_in_prompt,
)
from webui.settings import Settings

SD1_LORA = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)}
SDXL_META = {"ss_base_model_version": "sdxl_base_v1-0"}


def _lora(folder: Path, name: str, metadata: dict[str, str] | None = None) -> Path:
    return write_header_only(folder / f"{name}.safetensors", SD1_LORA, metadata=metadata)


def _service(data_dir: Path) -> NetworkService:
    settings = Settings(data_dir=data_dir, preload_model=False)
    return NetworkService(settings, HashCache(data_dir))


def test_card_badge_and_family_warning() -> None:
    xl = card_from_lora(LoraRecord(name="xl", path="/x", family=LoraFamily.SDXL), ModelFamily.SD1)
    assert (xl.badge, xl.fits, xl.mismatch) == ("SDXL", False, True)
    same = card_from_lora(LoraRecord(name="ink", path="/i", family=LoraFamily.SD1), ModelFamily.SD1_INPAINT)
    assert (same.badge, same.mismatch) == ("SD1", False)
    unknown = card_from_lora(LoraRecord(name="q", path="/q"), ModelFamily.SDXL)
    assert (unknown.badge, unknown.fits, unknown.mismatch) == ("", None, False)
    no_model = card_from_lora(LoraRecord(name="xl", path="/x", family=LoraFamily.SDXL), None)
    assert not no_model.mismatch
    # the loaded family first, unknown next, other families last; search and family filter
    cards = [xl, unknown, same, NetworkCard(kind=LORA, name="b", path="/b", family=LoraFamily.SD1, fits=True)]
    assert [c.name for c in filter_cards(cards)] == ["b", "ink", "q", "xl"]
    assert [c.name for c in filter_cards(cards, family="SDXL")] == ["xl"]
    assert [c.name for c in filter_cards(cards, family="Unknown")] == ["q"]
    assert [c.name for c in filter_cards(cards, query="IN")] == ["ink"]


def test_click_adds_tag_with_preferred_weight_and_activation_text_and_again_removes_it() -> None:
    card = NetworkCard(
        kind=LORA, name="ink", path="/i", preferred_weight=0.8, activation_text="ink wash, monochrome"
    )
    added = toggle_in_prompt("a cat", card)
    assert added == "a cat <lora:ink:0.8>, ink wash, monochrome"
    assert toggle_in_prompt(added, card) == "a cat"
    assert toggle_in_prompt("", card) == "<lora:ink:0.8>, ink wash, monochrome"
    # activation text that is also part of the LoRA's name is still added (and removed again)
    named = NetworkCard(kind=LORA, name="easel-grayscale", path="/g", activation_text="grayscale")
    assert toggle_in_prompt("a", named) == "a <lora:easel-grayscale:1>, grayscale"
    assert toggle_in_prompt("a <lora:easel-grayscale:1>, grayscale", named) == "a"
    # activation text the user already wrote is not doubled
    assert toggle_in_prompt("ink wash, monochrome, cat", card) == "ink wash, monochrome, cat <lora:ink:0.8>"
    # a tag typed with another weight is still "the same LoRA": the click removes it
    assert (
        toggle_in_prompt("a cat <lora:ink:0.3>, b", NetworkCard(kind=LORA, name="ink", path="/i"))
        == "a cat, b"
    )
    embedding = NetworkCard(kind=EMBEDDING, name="easynegative", path="/e")
    assert toggle_in_prompt("ugly", embedding) == "ugly, easynegative"
    assert toggle_in_prompt("ugly, easynegative, blurry", embedding) == "ugly, blurry"
    assert toggle_in_prompt("easynegative2", embedding) == "easynegative2, easynegative"


def test_edit_fields_merge_into_the_a1111_sidecar(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "Lora" / "styles"
    path = _lora(folder, "ink", SDXL_META)
    path.with_suffix(".json").write_text(json.dumps({"modelId": 42, "notes": "old"}), encoding="utf-8")
    networks = _service(tmp_path)
    card = networks.cards.save_fields(
        LORA, "ink", activation_text=" ink wash ", preferred_weight=0.7, notes="from civitai", description="d"
    )
    saved = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert saved == {
        "modelId": 42,
        "notes": "from civitai",
        "activation text": "ink wash",
        "preferred weight": 0.7,
        "description": "d",
        "sd version": "SDXL",
    }
    assert (card.activation_text, card.preferred_weight, card.group) == ("ink wash", 0.7, "styles")
    assert card.tag() == "<lora:ink:0.7>, ink wash"
    with pytest.raises(CardError, match="outside"):
        networks.cards.save_fields(
            LORA, "ink", activation_text="", preferred_weight=50, notes="", description=""
        )
    with pytest.raises(CardError, match="no longer in the library"):
        networks.cards.card(LORA, "gone")


def test_use_image_as_preview_keeps_the_old_one_and_refreshes_the_thumbnail(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "Lora"
    path = _lora(folder, "ink")
    Image.new("RGB", (512, 768), (200, 30, 30)).save(folder / "ink.png")
    networks = _service(tmp_path)
    before = networks.cards.card(LORA, "ink")
    first_thumb = networks.cards.thumbnail(before)
    assert first_thumb is not None and Image.open(first_thumb).size == THUMBNAIL_SIZE

    card, kept = networks.cards.set_preview(LORA, "ink", Image.new("RGB", (64, 64), (10, 200, 10)))
    assert kept is not None and Path(kept).parent == folder and Path(kept).name.startswith("ink.preview-")
    assert Image.open(kept).getpixel((0, 0)) == (200, 30, 30)  # the old preview, kept
    assert card.preview == str(path.with_name("ink.preview.png"))
    new_thumb = networks.cards.thumbnail(card)
    assert new_thumb is not None and new_thumb != first_thumb
    red, green, _blue = Image.open(new_thumb).convert("RGB").getpixel((120, 150))
    assert green > 150 and red < 60
    # a second preview keeps the first one as well
    _card, kept_again = networks.cards.set_preview(LORA, "ink", Image.new("RGB", (64, 64), (0, 0, 250)))
    assert kept_again is not None and kept_again != kept and Path(kept).is_file()


def test_thumbnails_are_small_cached_and_only_served_from_their_folder(tmp_path: Path) -> None:
    cache = ThumbnailCache(tmp_path / "cache" / "thumbnails")
    source = tmp_path / "big.png"
    Image.new("RGBA", (1200, 600), (0, 0, 255, 128)).save(source)
    thumb = cache.for_file(source)
    assert thumb is not None and thumb.parent == cache.folder and thumb.suffix == ".jpg"
    assert Image.open(thumb).size == THUMBNAIL_SIZE  # cover-cropped to the card's shape
    mtime = thumb.stat().st_mtime_ns
    assert cache.for_file(source) == thumb and thumb.stat().st_mtime_ns == mtime  # made once
    os.utime(source, ns=(1, 1))
    assert cache.for_file(source) != thumb  # a changed preview gets a new thumbnail
    assert cache.contains(thumb)
    assert not cache.contains(cache.folder / ".." / "config.json")
    assert not cache.contains(source)
    assert not cache.contains(cache.folder / "../thumbnails" / ("0" * 40 + ".png"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert cache.for_file(tmp_path / "broken.png") is None
    assert cache.for_file(tmp_path / "missing.png") is None


def _count_header_reads(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    reads: list[str] = []
    original = module.read_header

    def counting(path: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(module, "read_header", counting)
    return reads


def test_lora_headers_are_read_once_then_cached_across_refresh_and_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "Lora"
    for index in range(12):
        _lora(root / f"group-{index % 3}", f"lora-{index:02d}", SDXL_META if index == 5 else None)
    reads = _count_header_reads(monkeypatch, lora_registry)
    cache_file = tmp_path / "cache" / "lora-headers.json"
    library = LoraLibrary(root, HashCache(tmp_path), HeaderCache(cache_file, schema=1))
    assert len(reads) == 12 and cache_file.is_file()
    reads.clear()
    assert len(library.refresh()) == 12 and reads == []  # unchanged files: no header read
    restarted = LoraLibrary(root, HashCache(tmp_path), HeaderCache(cache_file, schema=1))
    assert reads == []
    assert restarted.find("lora-05").family is LoraFamily.SDXL
    assert restarted.find("lora-01").family is LoraFamily.SD1 and restarted.find("lora-01").rank == 4
    touched = root / "group-1" / "lora-04.safetensors"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    restarted.refresh()
    assert reads == [str(touched)]
    reads.clear()
    # another schema (what is derived from a header changed): everything is read again
    LoraLibrary(root, HashCache(tmp_path), HeaderCache(cache_file, schema=2))
    assert len(reads) == 12
    # the full metadata is read on demand, not kept in the cache
    reads.clear()
    assert restarted.metadata(restarted.find("lora-05")) == SDXL_META and len(reads) == 1


def test_checkpoint_identity_cached_across_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.real_layouts import real_shapes

    root = tmp_path / "Stable-diffusion"
    write_header_only(root / "a.safetensors", real_shapes("sd1"))  # header only: reported as truncated
    (root / "b.ckpt").write_bytes(b"x" * 100)
    cache_file = tmp_path / "cache" / "checkpoint-headers.json"
    reads = _count_header_reads(monkeypatch, scanner)
    monkeypatch.setattr(scanner, "_from_cache", {})
    scanner._identify.cache_clear()
    first = scanner.scan_checkpoints(root, HeaderCache(cache_file, schema=1))
    assert reads
    reads.clear()
    scanner._identify.cache_clear()  # a new process: only the on-disk cache is left
    again = scanner.scan_checkpoints(root, HeaderCache(cache_file, schema=1))
    assert reads == []
    assert scanner.identify_file(root / "a.safetensors") == scanner.identify_file(root / "a.safetensors")
    assert reads == []  # the upscaler list's question is answered from the same cache
    assert [(r.name, r.family, r.family_error) for r in again] == [
        (r.name, r.family, r.family_error) for r in first
    ]
