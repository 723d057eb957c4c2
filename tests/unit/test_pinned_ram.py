"""The page-locked RAM models wait in (webui.runtime.pinned): its packing and the tensors' round trip.

Page-locking itself needs CUDA (tests/gpu covers it); here the same layout is made in ordinary RAM."""

from __future__ import annotations

import itertools

import torch

from webui.runtime.pinned import ALIGN, pack, to_pinned_ram


def test_packing_fills_whole_chunks_in_order_and_never_overlaps() -> None:
    sizes = [100, 600, 300, 2000, 10, 1024, 0, 7]
    places, chunks = pack(sizes, chunk_bytes=1024)
    spans: dict[int, list[tuple[int, int]]] = {}
    for size, (chunk, offset) in zip(sizes, places, strict=True):
        assert offset % ALIGN == 0
        assert offset + size <= chunks[chunk]
        spans.setdefault(chunk, []).append((offset, offset + size))
    for ranges in spans.values():
        ranges.sort()
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(ranges))
    assert places[3] == (3, 0) and chunks[3] == 2000  # larger than a chunk: a chunk of its own
    assert places[4] == (2, 512)  # the current chunk goes on filling after it
    # every chunk left behind is allocated whole (a power of two: the pinned allocator rounds nothing)
    assert chunks[0] == chunks[1] == 1024
    assert chunks[2] == chunks[4] == 1024
    assert chunks[5] == ALIGN and len(chunks) == 6  # the last one: what it holds


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.Linear(8, 8)
    )
    model[0].to(memory_format=torch.channels_last)  # a layout the copy must keep
    model.half_linear = torch.nn.Linear(8, 8).to(torch.float16)  # type: ignore[assignment]
    model.tied = torch.nn.Linear(8, 8, bias=False)  # type: ignore[assignment]
    model.tied.weight = model[3].weight  # type: ignore[union-attr]
    return model


def _values(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}


def test_the_tensors_move_into_the_chunks_with_their_values_layouts_and_ties() -> None:
    model = _model()
    before = _values(model)
    weight = model[0].weight
    store = to_pinned_ram([model], None, pin=False)
    assert model[0].weight is weight  # the same Parameter objects: hooks and references stay valid
    assert model.tied.weight is model[3].weight
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()
    spans = [(c.data_ptr(), c.data_ptr() + c.numel()) for c in store.chunks]
    state = model.state_dict(keep_vars=True)
    for name, value in before.items():
        moved = state[name]
        assert torch.equal(moved, value) and moved.dtype == value.dtype, name
        assert any(start <= moved.data_ptr() < end for start, end in spans), name
    # the tied weight counts once
    assert len(store.views) == len({id(t) for t in state.values()})


def test_the_chunks_are_reused_while_the_tensors_keep_their_shapes() -> None:
    model = _model()
    store = to_pinned_ram([model], None, pin=False)
    chunks = [c.data_ptr() for c in store.chunks]
    # the model goes "to the GPU" (fresh tensors elsewhere) and its weights change there (a LoRA merge)
    for param in model.parameters():
        param.data = param.data.clone()
    with torch.no_grad():
        model[3].weight.add_(1.0)
    expected = _values(model)
    again = to_pinned_ram([model], store, pin=False)
    assert again is store and [c.data_ptr() for c in again.chunks] == chunks
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    # another VAE (here: another layer) changes the tensors: new chunks
    model.half_linear = torch.nn.Linear(8, 16).to(torch.float16)  # type: ignore[assignment]
    other = to_pinned_ram([model], store, pin=False)
    assert other is not store and store.chunks == []  # the old layout's chunks are let go first
    assert torch.equal(model.half_linear.weight, other.views[[n for n, *_ in other.signature].index(
        "0.half_linear.weight")])  # fmt: skip
