"""The Train tab's pre-flight text: warnings that mention ``<image>.txt`` show it (Markdown would take it
for an HTML tag), and the memory estimate's line is there when the service made one."""

from __future__ import annotations

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
