"""ControlNet-LLLite (kohya-ss's "LoRA-like lite" ControlNets for SDXL): small modules in front of the UNet's
attention projections, applied by hooks.

A file holds one module per projection it controls, named after the projection's original (LDM) UNet path:
``lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.<weight>`` — the self-attention's query, key
and value and the cross-attention's query. Each module has

* ``conditioning1``: strided convolutions from the control image (RGB in [-1, 1], the picture's full size)
  down to the projection's token grid — depth 1 (4 then 2: 1/8, the latent grid), depth 2 (4 then 4:
  1/16) or depth 3 (4, 4 then 2: 1/32), told from the weights;
* ``down`` (the projection's input to a small width, ReLU), ``mid`` (that joined with the image embedding,
  ReLU) and ``up`` (back to the input width).

The projection then reads ``x + weight · up(mid([embedding, down(x)]))`` instead of ``x``: a forward
pre-hook on the projection's ``Linear``, registered for one pass and removed after it, as IP-Adapter's
hooks are. Both halves of a classifier-free-guidance batch get the image, as kohya's ComfyUI node does.
The image embedding is computed once per module and size; the modules are applied on the steps the unit's
start/end allow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

PREFIX = "lllite_unet_"
_PROJECTIONS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn2.to_k", "attn2.to_v")
# conditioning1's convolutions per depth: (out width as a fraction of the embedding width, kernel = stride)
_DEPTHS = {1: ((0.5, 4), (1.0, 2)), 2: ((0.5, 4), (1.0, 4)), 3: ((0.5, 4), (0.5, 4), (1.0, 2))}


class LLLiteError(RuntimeError):
    """An LLLite file that cannot be used; the message names the file and what to do."""


class LLLiteModule(torch.nn.Module):
    """One projection's module (the published parameter names: ``conditioning1.{0,2,4}``, ``down.0``,
    ``mid.0``, ``up.0``)."""

    def __init__(self, depth: int, embed_dim: int, in_dim: int, mlp_dim: int) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = 3
        for number, (fraction, kernel) in enumerate(_DEPTHS[depth]):
            if number:
                layers.append(torch.nn.ReLU())
            out = int(embed_dim * fraction)
            layers.append(torch.nn.Conv2d(width, out, kernel_size=kernel, stride=kernel))
            width = out
        self.conditioning1 = torch.nn.Sequential(*layers)
        self.down = torch.nn.Sequential(torch.nn.Linear(in_dim, mlp_dim), torch.nn.ReLU())
        self.mid = torch.nn.Sequential(torch.nn.Linear(mlp_dim + embed_dim, mlp_dim), torch.nn.ReLU())
        self.up = torch.nn.Sequential(torch.nn.Linear(mlp_dim, in_dim))
        self.stride = 1
        for _, kernel in _DEPTHS[depth]:
            self.stride *= kernel

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, tokens, embed_dim)`` of a ``(1, 3, H, W)`` control image in [-1, 1]."""
        grid = self.conditioning1(image)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """What is added to the projection's input ``x`` (rows, tokens, width)."""
        joined = torch.cat([embedding.expand(x.shape[0], -1, -1), self.down(x)], dim=2)
        return self.up(self.mid(joined))


class LLLiteModel(torch.nn.Module):
    """The modules of one LLLite file, by their published names."""

    def __init__(self, modules: dict[str, LLLiteModule]) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleDict(modules)


def _depth(weights: dict[str, torch.Tensor]) -> int:
    if "conditioning1.4.weight" in weights:
        return 3
    return 2 if weights["conditioning1.2.weight"].shape[-1] == 4 else 1


def build_lllite(state: dict[str, torch.Tensor], name: str) -> LLLiteModel:
    """An :class:`LLLiteModel` from a file's flat state (``<module name>.<parameter>``)."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, _, parameter = key.partition(".")
        if not module.startswith(PREFIX) or not parameter:
            raise LLLiteError(f"{name}: {key!r} is not a ControlNet-LLLite weight; download the file again")
        grouped.setdefault(module, {})[parameter] = value.float()
    modules = {}
    for module_name, weights in grouped.items():
        try:
            down = weights["down.0.weight"]
            if down.ndim != 2:
                raise LLLiteError(
                    f"{name}: {module_name} controls a convolution; Easel applies LLLite modules to the "
                    "attention projections only (as the published files do)"
                )
            module = LLLiteModule(
                _depth(weights),
                embed_dim=int(weights["conditioning1.0.weight"].shape[0]) * 2,
                in_dim=int(down.shape[1]),
                mlp_dim=int(down.shape[0]),
            )
            module.load_state_dict(weights, strict=True)
        except (KeyError, RuntimeError) as exc:
            if isinstance(exc, LLLiteError):
                raise
            detail = str(exc).strip().splitlines()[0][:200]
            raise LLLiteError(
                f"{name}: the module {module_name} does not load ({detail}); download the file again"
            ) from exc
        modules[module_name] = module
    if not modules:
        raise LLLiteError(f"{name}: no LLLite modules in the file")
    return LLLiteModel(modules).eval().requires_grad_(False)


def load_lllite(path: Path, name: str) -> LLLiteModel:
    """Read an LLLite file (``.safetensors``, or a weights-only ``.pth``)."""
    from webui.registry.pickle_check import read_weights

    return build_lllite(read_weights(path, unwrap=()), name)


def projection_names(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The UNet's attention projections by the names LLLite files give them."""
    from webui.runtime.lora import ldm_namer

    namer = ldm_namer(unet)
    found: dict[str, torch.nn.Module] = {}
    for path, module in unet.named_modules():
        if path.endswith(_PROJECTIONS) and isinstance(module, torch.nn.Linear):
            ldm = namer(path)
            if ldm is not None:
                found[PREFIX + ldm.replace(".", "_")] = module
    return found


@contextmanager
def lllite_hooks(unet: torch.nn.Module, units: list[Any], session: Any) -> Iterator[None]:
    """Hook the projections ``units`` (LLLite ``ControlUnitInput``s of ``session``) control; removed on exit.

    Raises ``ControlError`` when a file names projections this UNet does not have."""
    from webui.runtime.controlnet.apply import ControlError

    if not units:
        yield
        return
    targets = projection_names(unet)
    per_target: dict[str, list[tuple[Any, LLLiteModule]]] = {}
    for unit in units:
        blocks = unit.control.model.blocks
        unknown = [name for name in blocks if name not in targets]
        if unknown:
            raise ControlError(
                f"{unit.control.record.title} controls layers this checkpoint's UNet does not have "
                f"({', '.join(unknown[:3])}): choose an LLLite model made for this model family (SDXL)."
            )
        for name, module in blocks.items():
            per_target.setdefault(name, []).append((unit, module))
    size: dict[str, tuple[int, int]] = {}

    def remember(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs["sample"]
        size["latent"] = (int(sample.shape[-2]), int(sample.shape[-1]))

    handles = [unet.register_forward_pre_hook(remember, with_kwargs=True)]
    try:
        for name, entries in per_target.items():
            handles.append(
                targets[name].register_forward_pre_hook(_projection_hook(name, entries, session, size))
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


def _projection_hook(
    name: str, entries: list[tuple[Any, LLLiteModule]], session: Any, size: dict[str, tuple[int, int]]
) -> Any:
    from webui.runtime.controlnet.apply import ControlError

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> Any:
        active = [(unit, lite) for unit, lite in entries if unit.active_at(session.step, session.total)]
        if not active or "latent" not in size:
            return None
        x = args[0]
        height, width = size["latent"]
        added = None
        for unit, lite in active:
            key = (name, height, width, str(x.device), x.dtype)
            embedding = unit.lllite_embeddings.get(key)  # in the module's dtype
            if embedding is None:
                dtype = next(lite.parameters()).dtype
                scale = int(getattr(unit.control, "downscale", 8))  # pixels per latent
                hint = unit.hint(height * scale, width * scale, x.device, dtype) * 2.0 - 1.0
                with torch.no_grad():
                    embedding = lite.embed(hint)
                if embedding.shape[1] != x.shape[1]:
                    raise ControlError(
                        f"{unit.control.record.title}: its module {name} makes {embedding.shape[1]} image "
                        f"tokens for a layer of {x.shape[1]}; the file does not fit this checkpoint's UNet."
                    )
                unit.lllite_embeddings[key] = embedding
            delta = lite(x.to(embedding.dtype), embedding).to(x.dtype) * unit.weight
            added = delta if added is None else added + delta
        return (x + added, *args[1:])

    return hook
