"""The Train tab's pre-flight text: warnings that mention ``<image>.txt`` show it (Markdown would take it
for an HTML tag), and the memory estimate's line is there when the service made one."""

from __future__ import annotations

from pathlib import Path

from tests.ui.test_ui_app import FakeEngine
from webui.services.training import DatasetSummary, MemoryCheck
from webui.training.memory import GIB, MemoryEstimate
from webui.ui.train import _summary_markdown


def test_the_summary_shows_angle_brackets_and_the_memory_line() -> None:
    needed = MemoryEstimate(weights=2 * GIB, gradients=0, optimizer=0, activations=GIB)
    summary = DatasetSummary(
        images=2, samples_per_epoch=2, buckets=[(64, 64, 2)], readout="", resolution=64,
        skipped=["tiny.png: smaller than 64 <px>"],
        warnings=["no image has a caption: type a trigger word, or add <image>.txt captions"],
        memory=MemoryCheck("lora", "cuda:0", 8 * GIB, needed, needed, False),
    )  # fmt: skip
    text = _summary_markdown(summary)
    assert "add &lt;image&gt;.txt captions" in text and "<image>" not in text
    assert "smaller than 64 &lt;px&gt;" in text
    assert "Memory: about 3.0 GiB of 8.0 GiB on cuda:0 (weights 2.0, gradients 0.0" in text


def test_try_it_loads_a_dreambooth_checkpoint_and_tags_a_lora() -> None:
    """A dropdown value set by code loads nothing, so Try it starts the DreamBooth checkpoint's load itself,
    by the run's whole name (a folder's name may have a dot)."""
    from types import SimpleNamespace

    from webui.ui.train import try_in_txt2img

    titles = {"zwx.db": "zwx.db [0123456789]"}

    def find(name: str) -> SimpleNamespace:
        if name not in titles:
            raise LookupError(name)
        return SimpleNamespace(title=titles[name])

    services = SimpleNamespace(models=SimpleNamespace(find=find))

    def run(method: str, name: str, result: str | None) -> SimpleNamespace:
        settings = SimpleNamespace(method=method, word="zwx", class_word="ball")
        return SimpleNamespace(settings=settings, name=name, result=result)

    loads: list[str] = []
    assert try_in_txt2img(services, run("dreambooth", "zwx.db", "zwx.db"), loads.append) == (
        "zwx ball", "zwx.db [0123456789]"
    )  # fmt: skip
    assert loads == ["zwx.db [0123456789]"]
    assert try_in_txt2img(services, run("lora", "style", "style.safetensors"), loads.append) == (
        "zwx ball <lora:style:1>", None
    )  # fmt: skip
    assert try_in_txt2img(services, run("dreambooth", "gone", "gone"), loads.append) == ("zwx ball", None)
    assert loads == ["zwx.db [0123456789]"]  # nothing else was loaded


def test_every_writer_of_the_summary_runs_in_one_ordered_queue(tmp_path: Path) -> None:
    """Leaving Batch for Resolution fires two refreshes; run side by side, the older one could land last
    and show the old resolution's buckets. So each handler that writes the summary (check, upload, the
    settings' refreshes) is queued under one concurrency id, one at a time."""
    from webui.container import build_services
    from webui.settings import Settings
    from webui.ui.app import build_ui

    settings = Settings(data_dir=tmp_path, preload_model=False, api=False, nowebui=True)
    services = build_services(settings, engine_factory=FakeEngine)
    try:
        blocks = build_ui(services)
        summary = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "train_summary")
        writers = [fn for fn in blocks.fns.values() if any(out is summary for out in fn.outputs)]
        triggers = {blocks.blocks[block_id].elem_id for fn in writers for block_id, _ in fn.targets}
        assert {"train_check", "train_files", "train_resolution", "train_batch", "train_rank"} <= triggers
        assert {(fn.queue, fn.concurrency_id, fn.concurrency_limit) for fn in writers} == {
            (True, "train_summary", 1)
        }
    finally:
        services.generation.shutdown()
