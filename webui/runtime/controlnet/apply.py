"""Apply ControlNet units to a denoising pass without touching the pipeline or the UNet's code.

A :class:`ControlPlan` holds the prepared units of one job (loaded ControlNet / T2I-Adapter, the control
image, weight, schedule, mode). For each denoising pass the runtime opens ``plan.session(...)``: it
registers a forward pre-hook on the UNet *instance* that runs the active units on the UNet's inputs and
adds their residuals (``down_block_additional_residuals`` / ``mid_block_additional_residual`` for
ControlNets, ``down_intrablock_additional_residuals`` for adapters). The hook is removed when the
session closes, also on errors and interrupts, so a model never stays controlled after its job.

Scheduling follows the sd-webui-controlnet extension: a unit acts on the steps ``i`` of a pass with
``guidance_start * total <= i < guidance_end * total`` (so ``guidance_end = 0`` means never); weight 0
skips the unit. ``My prompt is more important`` scales the residuals down towards the outer blocks
(``weight * 0.825 ** (n - 1 - i)``), ``ControlNet is more important`` does that and applies the control to
the conditional half of the classifier-free-guidance batch only; the hires pass always uses the softer
per-block weights, as the extension does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from webui.runtime.devices import execution_device

log = logging.getLogger(__name__)

SOFT_DECAY = 0.825  # per-block decay of "My prompt is more important" (the extension's constant)
ADAPTER_SOFT_SCALES = (0.25, 0.62, 0.825, 1.0)  # T2I-Adapter feature levels, outer to inner
MODE_BALANCED = "Balanced"
MODE_PROMPT = "My prompt is more important"
MODE_CONTROL = "ControlNet is more important"


class ControlError(RuntimeError):
    """A ControlNet unit cannot be applied; the message is for the user."""


def fit_control_image(image: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
    """``image`` fitted to ``width`` x ``height`` the way the extension's resize modes do.

    ``Just Resize`` stretches; ``Crop and Resize`` scales to cover and centre-crops; ``Resize and Fill``
    scales to fit inside and pads with black (no control where there is no image).
    """
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    if resize_mode == "Just Resize":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if resize_mode == "Resize and Fill":
        fitted = ImageOps.contain(image, (width, height), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (width, height))
        canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
        return canvas
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)


@dataclass
class ControlUnitInput:
    """One prepared unit. ``control`` is a ``LoadedControlNet`` (``webui.runtime.controlnet.models``)."""

    control: Any
    image: Image.Image  # the control map (detected, or uploaded as is), any size; fitted per pass
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = MODE_BALANCED
    resize_mode: str = "Crop and Resize"
    hr_option: str = "Both"
    mask: Image.Image | None = None  # L, ``image``'s size, white = to be painted: the hint is -1 there
    ip_tokens: Any = None  # an IP-Adapter unit's image tokens (``ip_adapter.IPAdapterTokens``)
    _hints: dict[tuple[int, int, str], torch.Tensor] = field(default_factory=dict, repr=False)
    _adapter_features: dict[tuple[int, int, str], list[torch.Tensor]] = field(
        default_factory=dict, repr=False
    )
    # an LLLite unit's image embedding per module, size, device and dtype (``lllite.lllite_hooks``)
    lllite_embeddings: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def is_adapter(self) -> bool:
        return str(getattr(self.control, "kind", "controlnet")) == "t2i_adapter"

    @property
    def is_ip_adapter(self) -> bool:
        return str(getattr(self.control, "kind", "controlnet")) == "ip_adapter"

    @property
    def is_lllite(self) -> bool:
        return str(getattr(self.control, "kind", "controlnet")) == "lllite"

    @property
    def is_hooked(self) -> bool:
        """Applied by hooks inside the UNet (IP-Adapter, LLLite), not by residuals of its inputs."""
        return self.is_ip_adapter or self.is_lllite

    def acts_in(self, pass_name: str) -> bool:
        if self.weight == 0 or self.guidance_end <= self.guidance_start:
            return False
        if pass_name == "low":
            return self.hr_option != "High res only"
        if pass_name == "high":
            return self.hr_option != "Low res only"
        return True

    def active_at(self, step: int, total: int) -> bool:
        return self.guidance_start * total <= step < self.guidance_end * total

    def hint(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The control image as a ``(1, 3, height, width)`` tensor in [0, 1], cached per size."""
        key = (height, width, f"{device}/{dtype}")
        cached = self._hints.get(key)
        if cached is None:
            fitted = fit_control_image(self.image, width, height, self.resize_mode)
            array = np.asarray(fitted, dtype=np.float32) / 255.0
            if self.mask is not None:  # the inpaint ControlNets read -1 as "paint here"
                mask = fit_control_image(self.mask, width, height, self.resize_mode)
                array[np.asarray(mask)[..., 0] >= 128] = -1.0
            cached = torch.from_numpy(array).permute(2, 0, 1)[None].to(device, dtype)
            self._hints[key] = cached
        return cached


def _block_scales(unit: ControlUnitInput, count: int, soft: bool) -> list[float]:
    if not soft:
        return [unit.weight] * count
    if unit.is_adapter:
        levels = ADAPTER_SOFT_SCALES[-count:] if count <= len(ADAPTER_SOFT_SCALES) else None
        if levels is not None:
            return [unit.weight * s for s in levels]
    return [unit.weight * SOFT_DECAY ** float(count - 1 - i) for i in range(count)]


@dataclass
class ControlPlan:
    """The prepared ControlNet units of one job."""

    units: list[ControlUnitInput]

    def __bool__(self) -> bool:
        return bool(self.units)

    def cropped(self, box: tuple[int, int, int, int], size: tuple[int, int]) -> ControlPlan:
        """The plan for an "Only masked" inpainting pass over ``box`` of a ``size`` picture: each unit's map
        (and mask) cropped to the same part of the picture, so the control lines up with the crop."""
        width, height = size
        units = []
        for unit in self.units:
            scale_x, scale_y = unit.image.width / width, unit.image.height / height
            left, top, right, bottom = box
            area = (
                round(left * scale_x),
                round(top * scale_y),
                max(round(left * scale_x) + 1, round(right * scale_x)),
                max(round(top * scale_y) + 1, round(bottom * scale_y)),
            )
            mask = unit.mask.crop(area) if unit.mask is not None else None
            units.append(
                replace(
                    unit,
                    image=unit.image.crop(area),
                    mask=mask,
                    _hints={},
                    _adapter_features={},
                    lllite_embeddings={},
                )
            )
        return ControlPlan(units)

    @contextmanager
    def session(
        self, unet: torch.nn.Module, *, batch: int, total_steps: int, pass_name: str = "single"
    ) -> Iterator[ControlSession]:
        """Control ``unet`` for one pass of ``total_steps`` steps over ``batch`` images.

        ``pass_name`` is ``single`` (txt2img, img2img), or ``low`` / ``high`` for the two hires passes.
        """
        from webui.runtime.controlnet.ip_adapter import ip_adapter_hooks
        from webui.runtime.controlnet.lllite import lllite_hooks

        units = [unit for unit in self.units if unit.acts_in(pass_name)]
        residual_units = [unit for unit in units if not unit.is_hooked]
        ip_units = [unit for unit in units if unit.is_ip_adapter]
        lllite_units = [unit for unit in units if unit.is_lllite]
        session = ControlSession(residual_units, batch=batch, total=total_steps, soft=pass_name == "high")
        device = execution_device(unet)  # with --medvram/--lowvram the UNet's weights wait elsewhere
        moved = []
        for unit in units:
            module = unit.control.model
            if next(module.parameters()).device != device:
                moved.append((module, next(module.parameters()).device))
                module.to(device)
        handle = (
            unet.register_forward_pre_hook(session.pre_hook, with_kwargs=True) if residual_units else None
        )
        try:
            with ip_adapter_hooks(unet, ip_units, session), lllite_hooks(unet, lllite_units, session):
                yield session
        finally:
            if handle is not None:
                handle.remove()
            for module, original in moved:  # low VRAM: back where it was kept
                module.to(original)


class ControlSession:
    """The state of one controlled pass: which step it is on, and the hook that adds the residuals."""

    def __init__(self, units: list[ControlUnitInput], *, batch: int, total: int, soft: bool) -> None:
        self.units = units
        self.batch = batch
        self.total = max(1, total)
        self.soft = soft
        self.step = 0  # 0-based index of the step being computed; the step callback advances it
        self._cond_masks: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _cond_mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``(2 * batch, 1, 1, 1)``: 0 for the unconditional half of a CFG batch, 1 for the conditional half;
        made once per device and dtype."""
        mask = self._cond_masks.get((device, dtype))
        if mask is None:
            mask = torch.cat([torch.zeros(self.batch), torch.ones(self.batch)]).view(-1, 1, 1, 1)
            mask = self._cond_masks[(device, dtype)] = mask.to(device, dtype)
        return mask

    def advance(self, done: int) -> None:
        """Called after each step with the number of steps done."""
        self.step = done

    def pre_hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        context = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        active = [unit for unit in self.units if unit.active_at(self.step, self.total)]
        if not active:
            return None
        rows = sample.shape[0]
        # Diffusers stacks [unconditional, conditional] when classifier-free guidance is on.
        cond_mask = None
        if rows == 2 * self.batch and any(unit.control_mode == MODE_CONTROL for unit in active):
            cond_mask = self._cond_mask(sample.device, sample.dtype)
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        intrablock: list[torch.Tensor] | None = None
        latent = sample[:, :4]  # a 9-channel inpainting UNet's input starts with the 4 latent channels
        for unit in active:
            control = unit.control
            soft = self.soft or unit.control_mode != MODE_BALANCED
            only_cond = cond_mask is not None and unit.control_mode == MODE_CONTROL
            scale = int(getattr(control, "downscale", 8))
            height, width = sample.shape[-2] * scale, sample.shape[-1] * scale
            dtype = control.dtype
            hint = unit.hint(height, width, sample.device, dtype)
            if unit.is_adapter:
                features = self._adapter_features(unit, hint, rows, tuple(sample.shape[-2:]))
                scales = _block_scales(unit, len(features), soft)
                scaled = [f.to(sample.dtype) * s for f, s in zip(features, scales, strict=True)]
                if only_cond:
                    scaled = [f * cond_mask for f in scaled]
                intrablock = (
                    scaled if intrablock is None else [a + b for a, b in zip(intrablock, scaled, strict=True)]
                )
                continue
            extra: dict[str, Any] = {}
            if kwargs.get("added_cond_kwargs") is not None and getattr(control, "is_sdxl", False):
                extra["added_cond_kwargs"] = {k: v.to(dtype) for k, v in kwargs["added_cond_kwargs"].items()}
            residuals, middle = control.model(
                latent.to(dtype),
                timestep,
                encoder_hidden_states=context.to(dtype),
                controlnet_cond=hint.expand(rows, -1, -1, -1),
                conditioning_scale=1.0,
                return_dict=False,
                **extra,
            )
            scales = _block_scales(unit, len(residuals) + 1, soft)
            outs = [r.to(sample.dtype) * s for r, s in zip(residuals, scales[:-1], strict=True)]
            middle = middle.to(sample.dtype) * scales[-1]
            if only_cond:
                outs = [r * cond_mask for r in outs]
                middle = middle * cond_mask
            if down is None or mid is None:
                down, mid = outs, middle
            else:
                down = [a + b for a, b in zip(down, outs, strict=True)]
                mid = mid + middle
        if down is not None:
            kwargs["down_block_additional_residuals"] = tuple(down)
            kwargs["mid_block_additional_residual"] = mid
        if intrablock is not None:
            kwargs["down_intrablock_additional_residuals"] = list(intrablock)  # the UNet pops from it
        return args, kwargs

    @staticmethod
    def _adapter_features(
        unit: ControlUnitInput, hint: torch.Tensor, rows: int, latent: tuple[int, ...]
    ) -> list[torch.Tensor]:
        """The adapter's features of ``hint`` for ``rows`` rows, computed once per size (a pass's steps reuse
        them); ``ControlError`` when they do not match the ``latent`` size the UNet works at."""
        key = (hint.shape[-2], hint.shape[-1], f"{hint.device}/{hint.dtype}/{rows}")
        cached = unit._adapter_features.get(key)
        if cached is None:
            features = unit.control.model(hint)
            if tuple(features[0].shape[-2:]) != latent:
                raise ControlError(
                    f"{getattr(unit.control.record, 'title', 'The T2I-Adapter')} makes features of "
                    f"{tuple(features[0].shape[-2:])} for latents of {latent}: it was made for a model whose "
                    "VAE scales pictures differently; choose one made for this checkpoint."
                )
            cached = [f.expand(rows, *f.shape[1:]) for f in features]
            unit._adapter_features[key] = cached
        return cached
