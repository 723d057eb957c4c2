"""Page-locked ("pinned") RAM for models that wait in RAM while another one generates on a CUDA card.

A copy from pageable RAM to the GPU goes through a staging buffer at a few GB/s; from page-locked RAM the
card reads by DMA at the bus's speed (about 25 GB/s on PCIe 4, 50 on PCIe 5), so an SDXL checkpoint
(about 7 GB in fp16) comes back in a fraction of a second instead of seconds.

PyTorch's pinned allocator rounds every allocation up to a power of two and keeps freed blocks pinned, so
one allocation per tensor would hold up to twice the model's size and one allocation per model up to the
next power of two. Each model's tensors are instead packed, in order, into chunks of ``CHUNK_BYTES`` (a
power of two: nothing is rounded) and a last, smaller one. The chunks are made the first time the model
goes to RAM and reused every later time, as long as its tensors keep their names, shapes, layouts and dtypes
(a VAE swapped in makes new ones). A model that is never switched away from is never pinned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

CHUNK_BYTES = 256 * 2**20
ALIGN = 512  # bytes: every tensor starts on a DMA-friendly boundary (and on its element size)

Signature = tuple[tuple[str, tuple[int, ...], tuple[int, ...], torch.dtype], ...]


def pack(sizes: Sequence[int], chunk_bytes: int = CHUNK_BYTES) -> tuple[list[tuple[int, int]], list[int]]:
    """Where each of ``sizes`` (bytes) goes: ``(chunk, offset)`` per tensor, in order, and each chunk's size.

    A tensor that does not fit in what is left of the current chunk starts the next one (the one left
    keeps its full ``chunk_bytes``); a tensor larger than a chunk gets a chunk of its own."""
    places: list[tuple[int, int]] = []
    chunks: list[int] = []
    current, used = -1, chunk_bytes
    for size in sizes:
        if size > chunk_bytes:  # a chunk of its own; the current one goes on filling
            places.append((len(chunks), 0))
            chunks.append(size)
            continue
        if current < 0 or used + size > chunk_bytes:
            if current >= 0:
                chunks[current] = chunk_bytes
            chunks.append(0)
            current, used = len(chunks) - 1, 0
        places.append((current, used))
        used += -(-size // ALIGN) * ALIGN
        chunks[current] = min(used, chunk_bytes)
    return places, chunks


@dataclass
class PinnedRam:
    """One model's page-locked chunks and the view of them that each of its tensors lives in."""

    signature: Signature
    chunks: list[torch.Tensor]
    views: list[torch.Tensor]

    def release(self) -> None:
        """Let go of the chunks (to be made again in another layout): PyTorch's pinned cache takes them
        back and the next allocation of that size reuses them, so a new layout does not hold two copies."""
        self.chunks.clear()
        self.views.clear()


def _slots(modules: Sequence[torch.nn.Module]) -> Iterator[tuple[str, torch.nn.Module, str, bool]]:
    """Every parameter and buffer slot of ``modules``: (name, owning module, attribute, is a parameter)."""
    for index, root in enumerate(modules):
        for prefix, module in root.named_modules(remove_duplicate=True):
            for name, param in module._parameters.items():
                if param is not None:
                    yield f"{index}.{prefix}.{name}", module, name, True
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    yield f"{index}.{prefix}.{name}", module, name, False


def _dense(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` covers exactly ``numel`` elements in some dimension order (contiguous, channels
    last), so a view of the same strides fits in ``numel × element size`` bytes."""
    channels_last = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
    return tensor.is_contiguous() or channels_last


def to_pinned_ram(
    modules: Sequence[torch.nn.Module], held: PinnedRam | None, *, pin: bool = True
) -> PinnedRam:
    """Move ``modules``' parameters and buffers into page-locked RAM (``held``'s chunks when they still
    fit, new ones otherwise) and return what holds them. ``pin=False`` makes ordinary RAM with the same
    layout (machines without CUDA; the tests). A tensor shared between modules stays shared."""
    slots = list(_slots(modules))
    unique: dict[int, int] = {}  # id of a tensor → its index in ``tensors`` (tied weights count once)
    tensors: list[torch.Tensor] = []
    names: list[str] = []
    for name, module, attr, _ in slots:
        tensor = getattr(module, attr)
        if id(tensor) not in unique:
            if not _dense(tensor):
                tensor.data = tensor.data.contiguous()
            unique[id(tensor)] = len(tensors)
            tensors.append(tensor)
            names.append(name)
    signature: Signature = tuple(
        (name, tuple(t.shape), tuple(t.stride()), t.dtype) for name, t in zip(names, tensors, strict=True)
    )
    if held is not None and held.signature != signature:
        held.release()  # the model's tensors live elsewhere now (on the card): nothing still uses them
        held = None
    store = held if held is not None else _allocate(tensors, signature, pin)
    for tensor, view in zip(tensors, store.views, strict=True):
        if view.data_ptr() != tensor.data_ptr():  # not already there (a model in RAM stays put)
            view.copy_(tensor.detach(), non_blocking=True)
    if any(t.is_cuda for t in tensors):
        torch.cuda.synchronize()  # the copies have landed before the GPU's memory is let go
    with torch.no_grad():
        for _, module, attr, is_param in slots:
            tensor = getattr(module, attr)
            view = store.views[unique[id(tensor)]]
            if is_param:
                tensor.data = view
            else:
                module._buffers[attr] = view
    return store


def _allocate(tensors: Sequence[torch.Tensor], signature: Signature, pin: bool) -> PinnedRam:
    places, sizes = pack([t.numel() * t.element_size() for t in tensors])
    chunks = [torch.empty(size, dtype=torch.uint8, pin_memory=pin) for size in sizes]
    views = []
    for tensor, (chunk, offset) in zip(tensors, places, strict=True):
        nbytes = tensor.numel() * tensor.element_size()
        flat = chunks[chunk][offset : offset + nbytes].view(tensor.dtype)
        views.append(flat.as_strided(tensor.shape, tensor.stride()))
    return PinnedRam(signature, chunks, views)
