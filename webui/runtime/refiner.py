"""The refiner: a job hands its latents to a second checkpoint part-way through its steps (A1111 1.6+).

The switch happens inside one sampling loop, as in A1111: the sampler keeps its sigmas, its history of
model outputs and its noise; only the model that predicts the noise changes, with its own encoding of the
prompt. :class:`RefinerUNet` stands where the pipeline's UNet stands. At each evaluation it decides, by
the timestep (A1111's default) or by the step count (option ``refiner_switch_by_sample_steps``), whether
the base or the refiner answers; once it has switched it stays switched.

What stays with the base: LoRAs and ControlNet units act on the base's UNet (their hooks are on it), so
they shape the steps before the switch; the image is decoded with the job's VAE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from webui.domain.models import refiner_kind_error
from webui.runtime.generate import GenerationError, _expand, vae_scale_factor
from webui.runtime.loader import LoadedModel

# A1111's hires-fix option ``hires_fix_refiner_pass``: the passes of a hires job the refiner acts in.
HIRES_REFINER_PASSES: dict[str, frozenset[str]] = {
    "first pass": frozenset({"low"}),
    "second pass": frozenset({"high"}),
    "both passes": frozenset({"low", "high"}),
}

# The SDXL refiner's aesthetic-score conditioning (A1111's sdxl_refiner_high/low_aesthetic_score defaults).
AESTHETIC_SCORE = 6.0
NEGATIVE_AESTHETIC_SCORE = 2.5


@dataclass
class RefinerPlan:
    """One job's refiner: the loaded checkpoint, where to switch, and which passes it acts in."""

    model: LoadedModel
    switch_at: float  # fraction of the denoising done before the refiner takes over, in (0, 1]
    by_steps: bool = False  # decide by the step count instead of by the timestep
    passes: frozenset[str] = frozenset({"single"})  # "single" (no hires), "low" / "high" (hires passes)
    embeddings: Any = None  # textual-inversion tables for the refiner's text encoders
    on_switch: Callable[[], None] | None = None  # called once per pass when the refiner takes over
    title: str = ""  # A1111's short title of the refiner checkpoint, for the infotext
    switched: bool = False  # a pass of this job ran the refiner (the infotext then names it)

    def acts_in(self, pass_name: str) -> bool:
        return pass_name == "single" or pass_name in self.passes


def check_refiner(base: LoadedModel, refiner: LoadedModel) -> None:
    """``GenerationError`` when ``refiner`` cannot take over ``base``'s latents part-way."""
    name, base_name = refiner.record.name, base.record.name
    problem = refiner_kind_error(name, refiner.family, base_name, base.family)
    if problem:
        raise GenerationError(problem)
    if refiner.unet.config.in_channels != 4:
        raise GenerationError(
            f"The refiner {name} is an inpainting or upscaling checkpoint; a refiner must be a plain one."
        )
    base_type = base.scheduler_config.get("prediction_type", "epsilon")
    refiner_type = refiner.scheduler_config.get("prediction_type", "epsilon")
    if base_type != refiner_type:
        raise GenerationError(
            f"The refiner {name} predicts {refiner_type} and {base_name} predicts {base_type}; the sampler "
            "cannot carry over between them. Choose a refiner of the same prediction type."
        )


def attach_refiner(pipe: Any, model: LoadedModel, job: Any, steps: int, batch: int) -> RefinerUNet | None:
    """Put a :class:`RefinerUNet` in ``pipe`` for this pass of ``job`` when its plan acts in it."""
    plan: RefinerPlan | None = job.extra.get("refiner")
    if plan is None or not plan.acts_in(job.extra.get("control_pass", "single")):
        return None
    switch = RefinerUNet(model, plan, job, steps, batch, pipe)
    pipe.unet = switch
    return switch


class RefinerUNet:
    """The pipeline's UNet for a pass with a refiner: the base's UNet until the switch, then the refiner's.

    Attributes the pipeline reads (``config``, ``dtype``, ``add_embedding``...) are the base UNet's, so the
    pipeline prepares its inputs for the base as usual; the refiner's conditioning replaces them at the call.
    """

    def __init__(
        self, base: LoadedModel, plan: RefinerPlan, job: Any, steps: int, batch: int, pipe: Any
    ) -> None:
        self._base = base
        self._plan = plan
        self._job = job
        self._steps = max(1, steps)
        self._batch = batch
        self._pipe = pipe
        self._step = 0  # loop iterations done in this pass (the pipeline's step callback says)
        self._timesteps: list[float] | None = None  # the pass's timesteps on the host, read once
        self._schedule: Any = None  # the refiner's encoding of the prompts, made at the switch
        self._conditioning: tuple[Any, Any, dict[str, Any]] | None = None  # (cond, uncond, UNet kwargs)
        self._time_ids_cache: torch.Tensor | None = None
        self.switched = False

    def __getattr__(self, name: str) -> Any:  # config, dtype, device, add_embedding...: the base's
        return getattr(self._base.unet, name)

    def advance(self, done: int) -> None:
        """The pipeline finished loop iteration ``done`` (1-based) of this pass."""
        self._step = done

    def _due(self) -> bool:
        if self._plan.by_steps:
            completed = self._step / self._steps
        else:  # A1111: the timestep nearest the current noise level, as a fraction of the 1000 steps
            completed = (999 - round(self._timestep())) / 1000
        return completed >= self._plan.switch_at

    def _timestep(self) -> float:
        """This loop iteration's timestep, from a host copy of the schedule made once per pass (reading the
        UNet's device tensor would wait for the GPU at every step). img2img runs the schedule's tail."""
        if self._timesteps is None:
            self._timesteps = [float(t) for t in self._pipe.scheduler.timesteps.detach().cpu()]
        in_loop = int(getattr(self._pipe, "_num_timesteps", None) or len(self._timesteps))
        index = min(len(self._timesteps) - in_loop + self._step, len(self._timesteps) - 1)
        return self._timesteps[index]

    def __call__(self, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.switched:
            if not self._due():
                return self._base.unet(sample, timestep, *args, **kwargs)
            self._switch()
        return self._refine(sample, timestep, kwargs)

    def _switch(self) -> None:
        from webui.runtime.conditioning import model_prompt_encoder

        refiner = self._plan.model
        encoder = model_prompt_encoder(refiner, self._plan.embeddings)
        job = self._job
        self._schedule = encoder.encode_schedule(job.prompt, job.negative_prompt, self._steps, job.clip_skip)
        self.switched = self._plan.switched = True
        if self._plan.on_switch is not None:
            self._plan.on_switch()

    def _refine(self, sample: torch.Tensor, timestep: Any, kwargs: dict[str, Any]) -> Any:
        unet = self._plan.model.unet
        call = self._unet_kwargs(sample, kwargs.get("added_cond_kwargs") or {})
        # An inpainting base's input carries its mask and masked image after the 4 latent channels.
        output = unet(sample[:, :4].to(unet.device, unet.dtype), timestep, **call)[0]
        return (output.to(sample.dtype),)

    def _unet_kwargs(self, sample: torch.Tensor, added: dict[str, Any]) -> dict[str, Any]:
        """The refiner's conditioning for this step, built again only when prompt editing changes it."""
        cond, uncond = self._schedule.at(min(self._step, self._steps - 1))
        cached = self._conditioning
        if cached is not None and cached[0] is cond and cached[1] is uncond:
            return cached[2]
        refiner = self._plan.model
        device, dtype = refiner.device, refiner.unet.dtype
        with_cfg = sample.shape[0] == 2 * self._batch

        def both(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
            pos = _expand(pos.to(device, dtype), self._batch)
            return torch.cat([_expand(neg.to(device, dtype), self._batch), pos]) if with_cfg else pos

        call: dict[str, Any] = {
            "encoder_hidden_states": both(cond.embeds, uncond.embeds),
            "return_dict": False,
        }
        if refiner.family.is_sdxl:
            call["added_cond_kwargs"] = {
                "text_embeds": both(cond.pooled, uncond.pooled),
                "time_ids": self._time_ids(added.get("time_ids"), sample, with_cfg),
            }
        self._conditioning = (cond, uncond, call)
        return call

    def _time_ids(self, base_ids: torch.Tensor | None, sample: torch.Tensor, with_cfg: bool) -> torch.Tensor:
        """SDXL's size conditioning for the refiner: the base's original size and crop, then the aesthetic
        score (the SDXL refiner) or the target size (an SDXL base used as refiner). Fixed for the pass."""
        if self._time_ids_cache is not None:
            return self._time_ids_cache
        refiner = self._plan.model
        rows = sample.shape[0]
        scale = vae_scale_factor(self._base)
        height, width = sample.shape[-2] * scale, sample.shape[-1] * scale
        if base_ids is None:
            head = torch.tensor([[height, width, 0, 0]], dtype=torch.float32).repeat(rows, 1)
        else:
            head = base_ids[:, :4].float().cpu()
        if _time_id_count(refiner) == 5:
            scores = [AESTHETIC_SCORE] * rows
            if with_cfg:
                scores[: rows // 2] = [NEGATIVE_AESTHETIC_SCORE] * (rows // 2)
            tail = torch.tensor(scores, dtype=torch.float32).unsqueeze(1)
        else:
            tail = torch.tensor([[height, width]], dtype=torch.float32).repeat(rows, 1)
        self._time_ids_cache = torch.cat([head, tail], dim=1).to(refiner.device, refiner.unet.dtype)
        return self._time_ids_cache


def _time_id_count(model: LoadedModel) -> int:
    """How many size/aesthetic numbers an SDXL UNet's added embedding takes (6 base, 5 refiner)."""
    unet = model.unet
    pooled = model.text_encoders[-1].config.projection_dim
    return int((unet.add_embedding.linear_1.in_features - pooled) // unet.config.addition_time_embed_dim)


__all__ = [
    "HIRES_REFINER_PASSES",
    "RefinerPlan",
    "RefinerUNet",
    "attach_refiner",
    "check_refiner",
]
