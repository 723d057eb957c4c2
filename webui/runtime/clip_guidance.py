"""CLIP guidance: steer sampling with the gradient of the CLIP score of the predicted clean image.

After a guided sampling step (every ``every``-th, never the last) :class:`ClipGuide` takes the latents the
next step will start from and

1. predicts the clean latents ``x0`` with one extra UNet pass (positive conditioning only, with gradients),
   reading the noise level and the model input from the pipeline's own scheduler, so every sampler works
   (variance-exploding ones such as Euler and DPM++ SDE, variance-preserving ones such as DDIM and DPM++ 2M;
   ε, v and sample prediction);
2. decodes ``x0`` with the VAE (with gradients) to pixels in [0, 1];
3. takes ``cutouts`` views of each image (the whole image, then random square crops of 60-100 % of the
   side, from a generator seeded by the image's seed, so a seed reproduces), resized to the CLIP model's
   input size;
4. embeds them with the CLIP image tower (``ClipEmbedder.images``, differentiable) and measures the squared
   spherical distance to the prompt's CLIP text embedding (the prompt as CLIP reads it:
   ``webui.domain.clip.clip_text``), averaged over the views;
5. moves the latents against the gradient of that loss: ``latents -= scale · σ² · ∇loss`` in the
   scheduler's own (σ-scaled) space, i.e. ``(1 - ᾱ) · scale · ∇loss`` for variance-preserving latents — the
   classifier-guidance step, by Tweedie's formula the shift of the predicted clean image.

Cost per guided step: one UNet forward and backward at batch size 1 per image, one VAE decoder forward and
backward, ``cutouts`` CLIP image passes and their backward. The VAE decoder's backward dominates at
512x512 and up; SDXL works but is slow and needs a lot of memory.

The guide runs inside the pipeline's ``callback_on_step_end`` (see ``webui.runtime.generate.step_callback``),
which runs under ``torch.inference_mode``; the guide leaves it for its own graph and hands back ordinary
latents.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from webui.domain.clip import clip_text
from webui.domain.clip_guidance import ClipGuidance

log = logging.getLogger(__name__)

CUTOUT_SEED_SALT = 0x5EED_C11F  # cutouts draw from seed ^ salt, apart from the sampler's own noise
MIN_CUTOUT = 0.6  # smallest crop side, as a fraction of the image's shorter side


class ClipEmbedderLike(Protocol):
    """What the guide needs of ``webui.runtime.clip.ClipEmbedder``."""

    name: str
    device: torch.device
    dtype: torch.dtype
    image_size: int

    def text(self, texts: list[str]) -> torch.Tensor: ...

    def images(self, pixels: torch.Tensor) -> torch.Tensor: ...


class ClipGuidanceError(ValueError):
    """CLIP guidance cannot run with this model or pipeline; the message is for the user."""


@dataclass
class ClipGuidancePlan:
    """What a job carries in ``DiffusionJob.extra["clip_guidance"]``: the settings and the loaded CLIP."""

    settings: ClipGuidance
    embedder: ClipEmbedderLike


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Half the squared great-circle distance between unit vectors ``a`` and ``b``: ``2·arcsin(|a-b|/2)²``.

    0 for equal directions, π²/2 for opposite ones; unlike ``1 - cos`` its gradient does not vanish as the
    directions meet.
    """
    return (a - b).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


def cutout_views(
    pixels: torch.Tensor, count: int, size: int, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """``count`` views of each image of ``pixels`` (N, 3, H, W): ``(N * count, 3, size, size)``.

    The first view is the whole image, the others random square crops (sides ``MIN_CUTOUT``..1 of the shorter
    side) drawn from ``generators[i]`` for image ``i``. Differentiable with respect to ``pixels``.
    """
    _, _, height, width = pixels.shape
    short = min(height, width)
    views = []
    for index, image in enumerate(pixels):
        generator = generators[index]
        for view in range(count):
            if view == 0:
                crop = image
            else:
                draw = torch.rand(3, generator=generator)
                side = max(1, int(short * (MIN_CUTOUT + (1 - MIN_CUTOUT) * float(draw[0]))))
                top = int(float(draw[1]) * (height - side + 1))
                left = int(float(draw[2]) * (width - side + 1))
                crop = image[:, top : top + side, left : left + side]
            views.append(
                F.interpolate(
                    crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
                )
            )
    return torch.cat(views)


def _normal(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A copy usable in an autograd graph (tensors made under inference mode cannot be saved for backward)."""
    return None if tensor is None else tensor.detach().clone()


class ClipGuide:
    """The CLIP guidance of one denoising pass over one batch (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        plan: ClipGuidancePlan,
        prompt: str,
        seeds: Sequence[int],
        total_steps: int,
    ) -> None:
        if model.unet.config.in_channels != 4:
            raise ClipGuidanceError(
                f"CLIP guidance works with text-to-image UNets; {model.record.model_name} is an inpainting "
                "model. Turn CLIP guidance off, or choose a non-inpainting checkpoint."
            )
        text = clip_text(prompt)
        if not text:
            raise ClipGuidanceError("CLIP guidance needs a prompt: there is nothing to steer towards.")
        self.model = model
        self.settings = plan.settings
        self.embedder = plan.embedder
        self.total = total_steps
        self.batch = len(seeds)
        with torch.inference_mode(False), torch.no_grad():
            self.text_embedding = self.embedder.text([text]).detach().clone().float()
        self.generators = [
            torch.Generator("cpu").manual_seed((int(seed) ^ CUTOUT_SEED_SALT) & 0xFFFF_FFFF_FFFF_FFFF)
            for seed in seeds
        ]
        self.guided = 0  # guided steps so far (for tests and logs)

    # -- when -------------------------------------------------------------------------------------------
    def applies(self, done: int, scheduler: Any) -> bool:
        """Guide after step ``done`` (1-based)? Every ``every``-th, never after the last, and not in the
        middle of a two-stage step (Heun, DPM2, DPM++ SDE)."""
        if done >= self.total or done % self.settings.every:
            return False
        return bool(getattr(scheduler, "state_in_first_order", True))

    # -- the step ---------------------------------------------------------------------------------------
    def __call__(
        self,
        pipeline: Any,
        loop_index: int,
        latents: torch.Tensor,
        cond: torch.Tensor,
        added_cond: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The latents after the guided step that follows loop iteration ``loop_index`` (0-based).

        ``cond``: the positive prompt embedding (batch rows); ``added_cond``: SDXL's pooled text, time ids.
        """
        scheduler = pipeline.scheduler
        position = self._next_position(pipeline, loop_index)
        if position is None:
            return latents
        timestep, alpha_bar = position
        if alpha_bar >= 1.0:  # no noise left: nothing to steer
            return latents
        with torch.inference_mode(False), torch.enable_grad():
            x = latents.detach().clone().requires_grad_(True)
            loss = self.loss(scheduler, x, timestep, alpha_bar, cond, added_cond)
            (grad,) = torch.autograd.grad(loss, x)
        sigma_sq = (1.0 - alpha_bar) / alpha_bar  # the scheduler space's σ² ...
        if not self._variance_exploding(scheduler):
            sigma_sq = 1.0 - alpha_bar  # ... or variance-preserving latents' (1 - ᾱ)
        if not torch.isfinite(grad).all():
            log.warning(
                "CLIP guidance: the gradient is not finite at step %d; step not guided", loop_index + 1
            )
            return latents
        self.guided += 1
        step = (self.settings.scale * sigma_sq) * grad
        return (latents.float() - step.float()).to(latents.dtype)

    def loss(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        alpha_bar: float,
        cond: torch.Tensor,
        added_cond: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """The CLIP loss of the clean image predicted from ``latents`` (summed over the batch)."""
        unet = self.model.unet
        model_input = scheduler.scale_model_input(latents, timestep)
        kwargs: dict[str, Any] = {}
        if added_cond is not None:
            kwargs["added_cond_kwargs"] = {key: _normal(value) for key, value in added_cond.items()}
        output = unet(
            model_input.to(unet.dtype),
            timestep.to(model_input.device),
            encoder_hidden_states=_normal(cond).to(unet.dtype),  # type: ignore[union-attr]
            return_dict=False,
            **kwargs,
        )[0].float()
        x_t = model_input.float()
        root_a, root_1ma = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
        prediction = str(scheduler.config.get("prediction_type", "epsilon"))
        if prediction == "v_prediction":
            x0 = root_a * x_t - root_1ma * output
        elif prediction == "sample":
            x0 = output
        else:
            x0 = (x_t - root_1ma * output) / root_a
        pixels = self._decode(x0)
        embedder = self.embedder
        views = cutout_views(pixels.float(), self.settings.cutouts, embedder.image_size, self.generators)
        image_embeddings = embedder.images(views.to(embedder.device, embedder.dtype)).float()
        text = self.text_embedding.to(image_embeddings.device)
        distances = spherical_distance(image_embeddings, text).view(self.batch, self.settings.cutouts)
        return distances.mean(dim=1).sum()

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        config = vae.config
        scaled = x0 / config.scaling_factor
        shift = getattr(config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        decoded = vae.decode(scaled.to(vae.dtype)).sample.float()
        return (decoded / 2 + 0.5).clamp(0, 1)

    # -- where on the noise schedule ----------------------------------------------------------------------
    @staticmethod
    def _variance_exploding(scheduler: Any) -> bool:
        """k-diffusion style schedulers (Euler, LMS, Heun, DPM2, DPM++ SDE) keep latents at σ-scale."""
        return float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0 + 1e-6

    @staticmethod
    def _next_position(pipeline: Any, loop_index: int) -> tuple[torch.Tensor, float] | None:
        """The timestep the next step evaluates the UNet at and its ᾱ (cumulative signal fraction)."""
        scheduler = pipeline.scheduler
        timesteps = scheduler.timesteps
        in_loop = int(getattr(pipeline, "_num_timesteps", None) or len(timesteps))
        index = len(timesteps) - in_loop + loop_index + 1  # img2img runs the tail of the schedule
        if index >= len(timesteps):
            return None
        timestep = timesteps[index]
        sigmas = getattr(scheduler, "sigmas", None)
        if sigmas is not None and len(sigmas) > index:
            sigma = float(sigmas[index])
            alpha_bar = 1.0 / (1.0 + sigma * sigma)
        else:
            alphas = scheduler.alphas_cumprod
            alpha_bar = float(alphas[round(float(timestep))])
        return timestep.detach().clone(), alpha_bar


def guide_for(model: Any, job: Any, total_steps: int, prompt: str | None = None) -> ClipGuide | None:
    """The guide of one pass of ``job`` (``job.extra["clip_guidance"]``, a :class:`ClipGuidancePlan`), or
    ``None`` when the job is not guided."""
    plan = job.extra.get("clip_guidance")
    if plan is None or not plan.settings.enabled:
        return None
    return ClipGuide(model, plan, job.prompt if prompt is None else prompt, job.seeds, total_steps)
