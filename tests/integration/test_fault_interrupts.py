"""Interrupt and skip at random steps: the job stops, and the next job is exact (the same bytes as the same
request run alone), whatever the stopped job was doing (txt2img, hires fix, another sampler, a batch)."""

from __future__ import annotations

import random
import threading

from webui.domain.generation import Txt2ImgRequest

REFERENCE = {"prompt": "a red circle", "seed": 1234, "width": 64, "height": 64, "steps": 4}


def _stopped_job(rng: random.Random) -> Txt2ImgRequest:
    fields: dict[str, object] = {
        "prompt": rng.choice(["a blue square", "a green cat (fluffy:1.3)", "[dog:cat:0.5]"]),
        "seed": rng.randrange(1 << 30),
        "width": 64,
        "height": 64,
        "steps": rng.randint(2, 6),
        "sampler_name": rng.choice(["Euler a", "DPM++ 2M", "DDIM"]),
        "batch_size": rng.choice([1, 2]),
        "n_iter": rng.choice([1, 2]),
        "save_images": False,
    }
    if rng.random() < 0.4:
        fields.update(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.6)
    return Txt2ImgRequest(**fields)


def test_interrupt_or_skip_at_random_steps_leaves_the_next_job_exact(services) -> None:
    generation = services.generation
    alone = generation.txt2img(Txt2ImgRequest(**REFERENCE, save_images=False)).images[0].png_bytes
    rng = random.Random(19)
    original = generation.progress.step
    for trial in range(5):
        request = _stopped_job(rng)
        total = request.steps + (request.hr_second_pass_steps if request.enable_hr else 0)
        at, action = rng.randint(1, total), rng.choice(["interrupt", "skip"])
        fired = threading.Event()

        def step(
            step: int, steps: int, textinfo: str | None = None, at=at, action=action, fired=fired
        ) -> None:
            original(step, steps, textinfo)
            if step == min(at, steps) and not fired.is_set():
                fired.set()
                getattr(generation, action)()

        generation.progress.step = step  # type: ignore[method-assign]
        try:
            stopped = generation.txt2img(request)
        finally:
            generation.progress.step = original  # type: ignore[method-assign]
        assert fired.is_set(), f"trial {trial}: never reached step {at}"
        assert stopped.interrupted == (action == "interrupt"), f"trial {trial}"
        after = generation.txt2img(Txt2ImgRequest(**REFERENCE, save_images=False))
        assert not after.interrupted
        assert after.images[0].png_bytes == alone, (
            f"trial {trial}: {action} at step {at} changed the next job"
        )
    # An interrupt that arrives while nothing runs does not stop the next job.
    generation.interrupt()
    assert generation.txt2img(Txt2ImgRequest(**REFERENCE, save_images=False)).images[0].png_bytes == alone
