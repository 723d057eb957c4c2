"""The denoising loop reads no tensor values back to the host in Easel's own code.

On a GPU every such read (``.item()``, ``bool(tensor)``, ``float(tensor)``, ``.tolist()``, ``.cpu()``,
``.numpy()``, ``.nonzero()``) waits for the device to finish, so a read per step would stall every step.
The CPU cannot show a stall, but it can show the reads: the tensor methods are wrapped, each read made
while a job runs is attributed to the innermost frame outside torch, and the jobs of 3 and 6 steps are
compared, so what grows with the steps is per-step work. Live previews are off (a preview decodes and reads
the latents every N steps by design). Reads inside the samplers' own code (diffusers keeps their sigmas
on the CPU) are not Easel's.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.test_controlnet_service import _unit
from webui.domain.generation import Txt2ImgRequest

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu", "nonzero")
ROOT = str(Path(__file__).resolve().parents[2] / "webui")
TORCH = str(Path(torch.__file__).parent)


class HostReads:
    """Counts host reads of tensor values by the first caller outside torch (``file:line``)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.on = False

    def record(self) -> None:
        frame = sys._getframe(2)  # the caller of the tensor method (record <- the wrapper <- caller)
        while frame is not None and TORCH in frame.f_code.co_filename:
            frame = frame.f_back  # torch's own helpers (``__array__`` ...): the caller is further out
        if frame is not None:
            self.counts[f"{frame.f_code.co_filename}:{frame.f_lineno}"] += 1


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostReads]:
    reads = HostReads()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self: torch.Tensor, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if reads.on:
                reads.record()
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    yield reads


def _easel_reads_per_step(
    services: Any, reads: HostReads, roots: tuple[str, ...] = (ROOT,), **fields: Any
) -> dict[str, int]:
    def job(steps: int) -> collections.Counter[str]:
        request = Txt2ImgRequest(
            **{
                "prompt": "a red ball",
                "width": 64,
                "height": 64,
                "seed": 1,
                "steps": steps,
                "save_images": False,
                "override_settings": {"live_previews_enable": False, "samples_save": False},
                **fields,
            }
        )
        reads.counts = collections.Counter()
        reads.on = True
        try:
            services.generation.txt2img(request)
        finally:
            reads.on = False
        return collections.Counter({site: n for site, n in reads.counts.items() if site.startswith(roots)})

    job(2)  # loads the model and warms everything up
    short, long = job(3), job(6)
    return {site: long[site] - short[site] for site in long if long[site] != short[site]}


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [("Euler", "Automatic"), ("DPM++ 2M", "Karras"), ("Euler a", "Automatic"), ("DPM++ 2M SDE", "Karras"),
     ("UniPC", "Automatic")],
)  # fmt: skip
def test_no_per_step_host_reads_in_easels_loop(
    services: Any, host_reads: HostReads, sampler: str, schedule: str
) -> None:
    assert _easel_reads_per_step(services, host_reads, sampler_name=sampler, scheduler=schedule) == {}


def test_no_per_step_host_reads_when_the_prompt_alternates_every_step(
    services: Any, host_reads: HostReads
) -> None:
    """``[red|blue]`` swaps the conditioning in the step callback at every step."""
    assert _easel_reads_per_step(services, host_reads, prompt="a [red|blue] ball", sampler_name="Euler") == {}


def test_no_per_step_host_reads_with_a_controlnet_unit(cn_services: Any, host_reads: HostReads) -> None:
    assert _easel_reads_per_step(cn_services, host_reads, controlnet_units=[_unit(cn_services)]) == {}


def test_the_counter_sees_a_read_added_to_the_loop(
    services: Any, host_reads: HostReads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check itself: an ``.item()`` in Easel's step callback is found, once per step."""
    from webui.runtime import generate

    original = generate.step_callback

    def reading(*args: Any, **kwargs: Any) -> Any:
        callback = original(*args, **kwargs)

        def on_step(pipe: Any, step: int, timestep: Any, state: dict[str, Any]) -> Any:
            state["latents"].abs().max().item()
            return callback(pipe, step, timestep, state)

        return on_step

    monkeypatch.setattr(generate, "step_callback", reading)
    found = _easel_reads_per_step(services, host_reads, (ROOT, __file__), sampler_name="Euler")
    assert list(found.values()) == [3]
