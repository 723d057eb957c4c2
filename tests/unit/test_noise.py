"""Seeded initial noise, variation seeds, per-image generators and the live-preview projection."""

from __future__ import annotations

import pytest
import torch

from webui.runtime.noise import (
    batch_seeds,
    initial_latents,
    make_generators,
    resolve_seed,
    slerp,
)
from webui.runtime.preview import latents_to_rgb, latents_to_rgb_tensor

SHAPE = (4, 8, 12)  # (C, H/8, W/8) for a 96x64 image


def _latents(
    seeds: list[int], subseeds: list[int] | None = None, strength: float = 0.0, **kw
) -> torch.Tensor:
    options = {"source": "CPU", "device": "cpu", **kw}
    return initial_latents(seeds, subseeds or [0] * len(seeds), strength, SHAPE, **options)


def test_shape_and_dtype() -> None:
    out = _latents([1, 2, 3], dtype=torch.float16)
    assert out.shape == (3, *SHAPE)
    assert out.dtype == torch.float16
    assert out.device.type == "cpu"


def test_same_seed_same_noise() -> None:
    assert torch.equal(_latents([42]), _latents([42]))
    assert not torch.equal(_latents([42]), _latents([43]))


def test_seed_noise_is_plain_torch_randn() -> None:
    expected = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(_latents([1234])[0], expected)


def test_cpu_noise_independent_of_batch_composition() -> None:
    batch = _latents([10, 11, 12])
    for i, seed in enumerate([10, 11, 12]):
        assert torch.equal(batch[i], _latents([seed])[0])
    assert torch.equal(_latents([12, 10])[1], batch[0])


def test_subseed_strength_zero_is_seed_noise() -> None:
    assert torch.equal(_latents([5], [99], 0.0), _latents([5]))


def test_subseed_strength_one_is_subseed_noise() -> None:
    assert torch.allclose(_latents([5], [99], 1.0), _latents([99]), atol=1e-5)


def test_subseed_blend_lies_between() -> None:
    seed_noise, sub_noise = _latents([5]), _latents([99])
    half = _latents([5], [99], 0.5)
    assert not torch.allclose(half, seed_noise)
    assert not torch.allclose(half, sub_noise)
    # Spherical interpolation keeps the noise's scale, unlike a linear average.
    assert float(half.std()) == pytest.approx(float(seed_noise.std()), rel=0.15)
    assert float(half.std()) > float(((seed_noise + sub_noise) / 2).std()) * 1.2


def test_slerp_identical_inputs() -> None:
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(slerp(0.3, x, x), x)


def test_generators_advance_for_step_noise() -> None:
    """Drawing the initial noise from given generators leaves them advanced, so step noise differs."""
    generators = make_generators([7, 8], "CPU", "cpu")
    first = initial_latents([7, 8], [0, 0], 0.0, SHAPE, source="CPU", device="cpu", generators=generators)
    assert torch.equal(first, _latents([7, 8]))
    step_noise = torch.randn(SHAPE, generator=generators[0])
    assert not torch.equal(step_noise, first[0])
    fresh = make_generators([7], "CPU", "cpu")[0]
    torch.randn(SHAPE, generator=fresh)
    assert torch.equal(torch.randn(SHAPE, generator=fresh), step_noise)


def test_make_generators_devices() -> None:
    gens = make_generators([1, 2], "CPU", "cpu")
    assert len(gens) == 2
    assert all(g.device.type == "cpu" for g in gens)
    assert make_generators([1], "GPU", "cpu")[0].device.type == "cpu"
    assert torch.equal(_latents([3], source="GPU"), _latents([3]))
    with pytest.raises(ValueError, match="CPU or GPU"):
        make_generators([1], "TPU", "cpu")


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        _latents([])
    with pytest.raises(ValueError):
        _latents([1, 2], [3], 0.5)
    with pytest.raises(ValueError):
        _latents([1], [2], 1.5)


def test_resolve_seed() -> None:
    assert resolve_seed(123) == 123
    assert resolve_seed(0) == 0
    drawn = {resolve_seed(-1) for _ in range(20)}
    assert all(0 <= s < 2**32 for s in drawn)
    assert len(drawn) > 1


def test_batch_seeds() -> None:
    seeds, subseeds = batch_seeds(100, 500, n_iter=2, batch_size=3)
    assert seeds == [100, 101, 102, 103, 104, 105]
    assert subseeds == [500, 501, 502, 503, 504, 505]
    # With a variation blended in, A1111 keeps the seed fixed and walks the subseed.
    seeds, subseeds = batch_seeds(100, 500, n_iter=1, batch_size=3, subseed_strength=0.4)
    assert seeds == [100, 100, 100]
    assert subseeds == [500, 501, 502]
    seeds, subseeds = batch_seeds(-1, -1, n_iter=1, batch_size=2)
    assert seeds[1] == seeds[0] + 1
    assert 0 <= seeds[0] < 2**32
    with pytest.raises(ValueError):
        batch_seeds(1, 1, n_iter=0, batch_size=1)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd1", "sd2-v", "sdxl-refiner"])
def test_preview_images(family: str) -> None:
    latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    images = latents_to_rgb(latents, family)
    assert len(images) == 2
    for image in images:
        assert image.mode == "RGB"
        assert image.size == (12, 8)
    assert latents_to_rgb_tensor(latents.half(), family).dtype == torch.uint8


def test_preview_projection_values() -> None:
    zeros = torch.zeros(1, 4, 2, 2)
    sd = latents_to_rgb_tensor(zeros, "sd")
    assert sd.unique().tolist() == [128]  # zero latent -> mid grey
    sdxl = latents_to_rgb_tensor(zeros, "sdxl")
    assert sdxl[0, 0, 0].tolist() != [128, 128, 128]  # the SDXL fit has a bias
    assert not torch.equal(latents_to_rgb_tensor(torch.ones(1, 4, 2, 2), "sd"), sd)


def test_preview_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        latents_to_rgb(torch.zeros(1, 3, 2, 2), "sd")
    with pytest.raises(ValueError):
        latents_to_rgb(torch.zeros(1, 4, 2, 2), "flux")


# ------------------------------------------------------------------------------------ resize seed from


def test_seed_resize_keeps_the_smaller_noise_in_the_centre() -> None:
    small = (4, 4, 6)  # the seed's noise at the "resize from" size
    out = _latents([7], resize_from=small[1:])[0]
    own = torch.randn(small, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out[:, 2:6, 3:9], own)  # (8 - 4) // 2 = 2 rows, (12 - 6) // 2 = 3 columns
    around = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out[:, :2], around[:, :2])  # outside the centre: the image-size noise of the seed


def test_seed_resize_from_a_larger_size_crops_the_centre() -> None:
    large = (4, 12, 16)
    out = _latents([7], resize_from=large[1:])[0]
    own = torch.randn(large, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out, own[:, 2:10, 2:14])


def test_seed_resize_to_the_same_size_changes_nothing() -> None:
    assert torch.equal(_latents([5], resize_from=SHAPE[1:]), _latents([5]))


def test_seed_resize_blends_the_variation_at_the_resize_size() -> None:
    small = (4, 4, 6)
    plain = _latents([7], [9], 1.0, resize_from=small[1:])[0]
    subseed_noise = torch.randn(small, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(plain[:, 2:6, 3:9], subseed_noise, atol=1e-5)
