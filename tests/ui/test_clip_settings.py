"""The CLIP options in the Settings tab: the model dropdown lists Automatic and the usable CLIP models."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from webui.services.clip import ClipService
from webui.services.option_groups import OPTIONS_BY_KEY
from webui.services.options import OptionsStore
from webui.ui.settings import option_choices


def test_clip_options_are_shown_with_their_choices(tmp_path: Path) -> None:
    root = tmp_path / "clip"
    (root / "b-model").mkdir(parents=True)
    (root / "b-model" / "config.json").write_text('{"model_type": "clip"}')  # no weights: unusable
    clip = ClipService(root, OptionsStore(tmp_path / "config.json"), tmp_path / "tok")
    model = OPTIONS_BY_KEY["easel_clip_model"]
    assert model.kind == "dropdown" and model.group == "CLIP"
    assert option_choices(SimpleNamespace(clip=clip), model) == [("Automatic", "Automatic")]
    assert option_choices(SimpleNamespace(clip=None), model) == [("Automatic", "Automatic")]
    device = OPTIONS_BY_KEY["easel_clip_device"]
    assert option_choices(SimpleNamespace(clip=clip), device) == [("cpu", "cpu"), ("cuda", "cuda")]
    assert OPTIONS_BY_KEY["easel_clip_score"].kind == "checkbox"
