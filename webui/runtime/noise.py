"""Seeded noise with A1111's semantics.

* Every image has its own seed and its own ``torch.Generator``, so an image depends on its seed only, never
  on the batch it was generated in.
* ``CPU`` source draws on the CPU and moves the result, so a seed gives the same noise on every device;
  ``GPU`` source draws on the generation device (faster, but differs between card kinds).
* A variation seed (``subseed``) is blended in by spherical interpolation at ``subseed_strength``.
* "Resize seed from" draws the seed's noise at another latent size and centres it in the image's noise
  (cropped when larger), so a seed keeps its composition when the image size changes.
* Ancestral/SDE samplers keep drawing from the same per-image generators after the initial noise, so the
  generators returned by :func:`make_generators` should be passed to :func:`initial_latents` and then to
  the pipeline call.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from webui.domain.generation import RngSource

SEED_RANGE = 2**32  # A1111 draws random seeds as unsigned 32-bit integers
RANDOM_SEED = -1


def resolve_seed(seed: int) -> int:
    """``-1`` -> a fresh random seed in ``[0, 2**32)``; any other value is returned unchanged."""
    if seed == RANDOM_SEED:
        return secrets.randbelow(SEED_RANGE)
    return int(seed)


def batch_seeds(
    seed: int, subseed: int, n_iter: int, batch_size: int, subseed_strength: float = 0.0
) -> tuple[list[int], list[int]]:
    """Per-image seeds and subseeds for ``n_iter`` batches of ``batch_size`` images, as A1111.

    ``-1`` is resolved once; image ``i`` gets ``seed + i`` and ``subseed + i``. When a variation is being
    blended in (``subseed_strength > 0``) every image keeps the same seed and only the subseed advances, so
    the batch shows variations of one image (A1111 behaves the same).
    """
    if n_iter < 1 or batch_size < 1:
        raise ValueError(f"n_iter and batch_size must be >= 1 (got {n_iter}, {batch_size})")
    base_seed = resolve_seed(seed)
    base_subseed = resolve_seed(subseed)
    count = n_iter * batch_size
    step = 0 if subseed_strength else 1
    seeds = [base_seed + i * step for i in range(count)]
    subseeds = [base_subseed + i for i in range(count)]
    return seeds, subseeds


def _source(source: RngSource | str) -> RngSource:
    try:
        return RngSource(source.upper() if isinstance(source, str) else source)
    except ValueError:
        raise ValueError(f"unknown noise source {source!r}; use CPU or GPU") from None


def _generator_device(source: RngSource | str, device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if _source(source) is RngSource.CPU:
        return torch.device("cpu")
    return device


def make_generators(
    seeds: Sequence[int], source: RngSource | str, device: torch.device | str
) -> list[torch.Generator]:
    """One generator per image, seeded with that image's seed, on the CPU (CPU source) or ``device``."""
    gen_device = _generator_device(source, device)
    return [torch.Generator(device=gen_device).manual_seed(int(seed)) for seed in seeds]


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``low`` (0) to ``high`` (1), computed the way A1111 does.

    A1111 normalises along dim 1 of a (C, H, W) tensor, i.e. each column of each channel is a vector;
    keeping that gives the same variation images as A1111 for the same seeds. Nearly parallel inputs fall
    back to linear interpolation.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * (1.0 - strength) + high * strength
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    low_weight = (torch.sin((1.0 - strength) * omega) / sin_omega).unsqueeze(1)
    high_weight = (torch.sin(strength * omega) / sin_omega).unsqueeze(1)
    return low_weight * low + high_weight * high


def _draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


def paste_centred(noise: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    """``canvas`` ``(C, H, W)`` with ``noise`` ``(C, h, w)`` centred on it, cropped where it is larger."""
    out = canvas.clone()
    spans = []
    for small, large in ((noise.shape[1], canvas.shape[1]), (noise.shape[2], canvas.shape[2])):
        offset = (large - small) // 2  # negative when the noise is larger than the canvas
        size = small if offset >= 0 else small + 2 * offset
        spans.append((max(offset, 0), max(-offset, 0), size))
    (ty, sy, h), (tx, sx, w) = spans
    out[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
    return out


def initial_latents(
    seeds: Sequence[int],
    subseeds: Sequence[int],
    subseed_strength: float,
    shape: tuple[int, int, int],
    *,
    source: RngSource | str,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    generators: Sequence[torch.Generator] | None = None,
    resize_from: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The starting noise for a batch: ``[len(seeds), C, h, w]`` on ``device`` in ``dtype``.

    ``shape`` is one image's latent shape ``(C, height // 8, width // 8)``. Each image's noise comes from a
    generator seeded with its seed; pass ``generators`` (from :func:`make_generators`, same seeds) to draw
    from them and leave them advanced for the sampler's per-step noise, as A1111 does. Subseed noise
    always comes from its own fresh generator. Noise is drawn in float32 and cast at the end.

    ``resize_from``: ``(h, w)`` latent size to draw the seed (and subseed) noise at instead; that noise is
    centred in noise drawn at ``shape`` from a fresh generator with the same seed, as A1111 does.
    """
    if not seeds:
        raise ValueError("initial_latents needs at least one seed")
    if subseed_strength and len(subseeds) < len(seeds):
        raise ValueError(f"{len(seeds)} seeds but only {len(subseeds)} subseeds")
    if not 0.0 <= subseed_strength <= 1.0:
        raise ValueError(f"subseed_strength must be within [0, 1] (got {subseed_strength})")
    if generators is None:
        generators = make_generators(seeds, source, device)
    elif len(generators) != len(seeds):
        raise ValueError(f"{len(seeds)} seeds but {len(generators)} generators")
    one_shape = tuple(int(n) for n in shape)
    target = torch.device(device)

    noise_shape = one_shape if resize_from is None else (one_shape[0], *(int(n) for n in resize_from))

    images = []
    for i, generator in enumerate(generators):
        noise = _draw(noise_shape, generator)
        if subseed_strength:
            sub_generator = make_generators([subseeds[i]], source, device)[0]
            noise = slerp(subseed_strength, noise, _draw(noise_shape, sub_generator))
        if noise_shape != one_shape:
            canvas = _draw(one_shape, make_generators([seeds[i]], source, device)[0])
            noise = paste_centred(noise, canvas)
        images.append(noise.to(target))
    return torch.stack(images).to(dtype)
