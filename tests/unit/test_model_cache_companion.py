"""The model cache keeps a job's refiner (its companion) beside the active model, and lets it go after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from webui.domain.models import CheckpointRecord, ModelFamily, ModelFormat
from webui.runtime.cache import DeviceChoice, ModelCache
from webui.runtime.loader import LoadedModel


def _record(name: str) -> CheckpointRecord:
    return CheckpointRecord(
        name=f"{name}.safetensors", path=f"/models/{name}.safetensors", format=ModelFormat.SAFETENSORS,
        size=1, mtime=1.0, family=ModelFamily.SD1,
    )  # fmt: skip


def _loader(record: CheckpointRecord, **_: Any) -> LoadedModel:
    unet = torch.nn.Linear(1, 1)
    return LoadedModel(
        record=record, family=ModelFamily.SD1, unet=unet, vae=torch.nn.Linear(1, 1), text_encoder=None,
        text_encoder_2=None, tokenizer=None, tokenizer_2=None, scheduler_config={}, dtype=torch.float32,
    )  # fmt: skip


def _cache(capacity: int) -> ModelCache:
    device = DeviceChoice(torch.device("cpu"), torch.float32, "sdpa", "normal")
    return ModelCache(device, capacity=capacity, tokenizer_cache=Path("/nonexistent"), loader=_loader)


def test_a_companion_is_kept_beyond_the_capacity_until_released() -> None:
    cache = _cache(capacity=1)
    base = cache.get(_record("base"))
    refiner = cache.companion(_record("refiner"))
    assert cache.active is base  # the job's model stays the active one
    assert cache.cached_names() == ["base.safetensors", "refiner.safetensors"]  # both, over a capacity of 1
    assert cache.companion(_record("refiner")) is refiner and cache.loads == 2  # no second load
    cache.release_companion()
    assert cache.cached_names() == ["base.safetensors"]  # back within the capacity: the refiner goes


def test_with_room_the_refiner_stays_warm_and_becomes_active_without_a_load() -> None:
    cache = _cache(capacity=2)
    cache.get(_record("base"))
    refiner = cache.companion(_record("refiner"))
    cache.release_companion()
    assert cache.cached_names() == ["base.safetensors", "refiner.safetensors"]
    assert cache.get(_record("refiner")) is refiner and cache.loads == 2
    assert cache.companion(_record("refiner")) is refiner  # the active model is its own companion
    cache.get(_record("third"))  # a third model: the least recently used non-active one goes
    assert cache.cached_names() == ["refiner.safetensors", "third.safetensors"]
