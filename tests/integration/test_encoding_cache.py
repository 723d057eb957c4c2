"""The text encoders' outputs cached per loaded model (an unchanged prompt is not encoded again): a cached
encoding gives the image an uncached one gives, and a change of what the encoders compute (a LoRA merged
into them, a changed textual-inversion file, clip skip) is never answered from the cache."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tests.fixtures.lora_files import kohya_lora, tiny_sd15_modules, write_lora
from webui.domain.generation import Txt2ImgRequest

SMALL = {
    "width": 64, "height": 64, "steps": 3, "seed": 5, "sampler_name": "Euler", "save_images": False,
    "checkpoint": "tiny-sd15.safetensors",
}  # fmt: skip


def _pixels(services: Any, prompt: str, **fields: Any) -> bytes:
    result = services.generation.txt2img(Txt2ImgRequest(**{**SMALL, "prompt": prompt, **fields}))
    with Image.open(io.BytesIO(result.images[0].png_bytes)) as image:
        return image.convert("RGB").tobytes()


def _cache(services: Any) -> Any:
    return services.generation.engine().cache.active.encodings


def _uncached(services: Any, prompt: str, **fields: Any) -> bytes:
    """The same job with the cache emptied first: every prompt encoded afresh."""
    _cache(services).clear()
    return _pixels(services, prompt, **fields)


def test_a_cached_encoding_gives_the_uncached_image(services: Any) -> None:
    first = _pixels(services, "a red ball, (shiny:1.3)", negative_prompt="blurry")
    cache = _cache(services)
    hits = cache.hits
    again = _pixels(services, "a red ball, (shiny:1.3)", negative_prompt="blurry", seed=6)
    assert cache.hits >= hits + 2  # prompt and negative from the cache
    assert again == _uncached(services, "a red ball, (shiny:1.3)", negative_prompt="blurry", seed=6)
    assert first != again  # another seed: the job really ran
    skip = _pixels(services, "a red ball, (shiny:1.3)", negative_prompt="blurry", clip_skip=2)
    assert skip == _uncached(services, "a red ball, (shiny:1.3)", negative_prompt="blurry", clip_skip=2)


def test_a_lora_in_the_text_encoder_is_never_answered_from_the_cache(
    services: Any, tiny_model_files: dict[str, Path]
) -> None:
    unet, te = tiny_sd15_modules(tiny_model_files["sd15_folder"])
    write_lora(services.settings.lora_path / "ink.safetensors", kohya_lora(unet, [te], scale=4.0))
    services.networks.refresh_loras()
    _pixels(services, "a red ball")  # "a red ball" cached without the LoRA
    with_lora = _pixels(services, "a red ball <lora:ink:1>")
    assert with_lora == _uncached(services, "a red ball <lora:ink:1>")
    te_only = _pixels(services, "a red ball <lora:ink:1:0>")  # the text encoder part only: another state
    assert te_only == _uncached(services, "a red ball <lora:ink:1:0>")
    plain = _pixels(services, "a red ball")  # the LoRA taken off again
    assert plain == _uncached(services, "a red ball")


def test_a_changed_embedding_file_is_encoded_again(services: Any) -> None:
    from safetensors.torch import save_file

    path = services.settings.embeddings_path / "shiny-style.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(2, 64, generator=torch.Generator().manual_seed(0))}, str(path))
    services.networks.refresh_embeddings()
    before = _pixels(services, "a cat, shiny-style")
    save_file({"emb_params": torch.randn(2, 64, generator=torch.Generator().manual_seed(1))}, str(path))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new modification time
    services.networks.refresh_embeddings()
    after = _pixels(services, "a cat, shiny-style")
    assert after != before
    assert after == _uncached(services, "a cat, shiny-style")
