"""``.ckpt``/``.pt`` load with ``weights_only=True`` only; anything needing code execution is refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from webui.registry.pickle_check import (  # noqa: E402
    CheckpointLoadError,
    UnsafeCheckpointError,
    load_pickle_checkpoint,
    read_weights,
)


def _record_execution(marker: str) -> dict[str, str]:
    """What a malicious pickle would run; here it only leaves a marker file."""
    Path(marker).write_text("executed")
    return {}


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_record_execution, (self.marker,))


def test_plain_state_dict_loads(tmp_path: Path) -> None:
    weights = {"model.diffusion_model.conv.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    path = tmp_path / "m.ckpt"
    torch.save(weights, path)
    loaded = load_pickle_checkpoint(path)
    assert loaded.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(loaded[key], value)


def test_state_dict_nesting_is_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"state_dict": {"state_dict": {"w": torch.zeros(3)}}, "global_step": 470000, "epoch": 6}, path)
    loaded = load_pickle_checkpoint(path)
    assert list(loaded) == ["w"]


def test_code_executing_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, path)

    with pytest.raises(UnsafeCheckpointError) as caught:
        load_pickle_checkpoint(path)
    assert not marker.exists(), "the pickle payload ran"
    message = str(caught.value)
    assert "evil.ckpt" in message
    assert "arbitrary code execution" in message
    assert "refuses" in message
    assert ".safetensors" in message
    assert isinstance(caught.value, CheckpointLoadError)

    # The payload is real: an unrestricted unpickler would have run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "executed"


def test_raw_pickle_with_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        load_pickle_checkpoint(path)
    assert not marker.exists()


def test_corrupt_file_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointLoadError, match=r"m\.ckpt"):
        load_pickle_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointLoadError, match="not found"):
        load_pickle_checkpoint(tmp_path / "nope.ckpt")


def test_shapes_are_read_without_loading_or_running_anything(tmp_path: Path) -> None:
    from collections import OrderedDict

    from webui.registry.pickle_check import read_pickle_shapes

    marker = tmp_path / "marker.txt"
    state = OrderedDict(w=torch.zeros(2, 3), p=torch.nn.Parameter(torch.ones(4)), h=torch.zeros(1).half())
    state._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]  # what module.state_dict() adds
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": state, "global_step": 5, "payload": _Payload(marker)}, path)
    assert read_pickle_shapes(path) == {"w": (2, 3), "p": (4,), "h": (1,)}
    assert not marker.exists(), "the pickle payload ran"

    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointLoadError, match=r"legacy\.pt: cannot list its tensors without loading"):
        read_pickle_shapes(legacy)


def test_read_weights_keeps_nested_dicts_unwraps_named_keys_and_never_runs_code(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    nested = tmp_path / "adapter.bin"
    torch.save(
        {"image_proj": {"proj.weight": torch.ones(2, 2)}, "ip_adapter": {"1.to_k_ip.weight": torch.ones(1)}},
        nested,
    )
    loaded = read_weights(nested, unwrap=())
    assert set(loaded) == {"image_proj", "ip_adapter"} and torch.equal(
        loaded["image_proj"]["proj.weight"], torch.ones(2, 2)
    )
    wrapped = tmp_path / "net.pth"
    torch.save({"params_ema": {"w": torch.zeros(3)}}, wrapped)
    assert list(read_weights(wrapped, unwrap=("params", "params_ema"))) == ["w"]
    flat = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(flat))
    assert list(read_weights(flat)) == ["w"]
    flat.write_bytes(flat.read_bytes()[:20])
    with pytest.raises(CheckpointLoadError, match=r"w\.safetensors.*incomplete or corrupt"):
        read_weights(flat)
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "payload": _Payload(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match="never runs"):
        read_weights(evil)
    assert not marker.exists()
