"""The eval set of the shared training loop (webui/training/loop.py): the same images, noise and timesteps
at every measurement, spread over the dataset, drawn without touching the training's random state."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from webui.training.loop import EVAL_TIMESTEPS, LoraTrainingConfig, Sample, eval_every, eval_set


def _sample(caption: str) -> Sample:
    return Sample(torch.zeros(4, 8, 8), caption, (64, 64), (0, 0), 1)


def test_the_eval_set_is_fixed_spread_over_the_dataset_and_leaves_the_random_state_alone() -> None:
    buckets = {
        (64, 64): [_sample(f"square {i}") for i in range(12)],
        (64, 128): [_sample(f"tall {i}") for i in range(4)],
    }
    scheduler = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    first, second = eval_set(buckets, scheduler, seed=3), eval_set(buckets, scheduler, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    captions = [item.caption for _, items, _, _ in first for item in items[:: len(EVAL_TIMESTEPS)]]
    assert captions == [f"square {i}" for i in (0, 2, 4, 6, 8, 10)] + ["tall 0", "tall 2"]
    for (bucket, items, noise, timesteps), (bucket2, items2, noise2, timesteps2) in zip(
        first, second, strict=True
    ):
        assert bucket == bucket2 and items == items2
        assert torch.equal(noise, noise2) and torch.equal(timesteps, timesteps2)
        assert noise.shape == (len(items), 4, 8, 8)
        assert timesteps.tolist()[: len(EVAL_TIMESTEPS)] == [300, 599, 899]
    other = eval_set(buckets, scheduler, seed=4)
    assert not torch.equal(other[0][2], first[0][2])  # the run's seed chooses the noise

    few = eval_set({(64, 64): [_sample("one"), _sample("two")]}, scheduler, seed=0)
    assert [item.caption for item in few[0][1]] == ["one"] * 3 + ["two"] * 3


def test_about_ten_measurements_over_a_run_unless_asked() -> None:
    assert eval_every(LoraTrainingConfig(name="x", total_steps=1000, batch_size=4)) == 100
    assert eval_every(LoraTrainingConfig(name="x", total_steps=7, batch_size=4), forwards=1) == 1
    # a short run measures less often: 24 eval forwards against 4 images × ~3 passes a step
    short = LoraTrainingConfig(name="x", total_steps=60, batch_size=4)
    every = eval_every(short)
    assert every == 20
    measurements = short.total_steps // every + 1
    assert measurements * 24 <= 0.15 * short.total_steps * 3 * short.batch_size
    accumulated = LoraTrainingConfig(name="x", total_steps=60, batch_size=4, gradient_accumulation=2)
    assert eval_every(accumulated) == 10  # twice the images a step: twice as many measurements
    assert eval_every(LoraTrainingConfig(name="x", total_steps=1000, eval_every=25)) == 25
