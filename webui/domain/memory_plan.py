"""How much GPU memory a job needs, and the memory mode that fits it (``--memory-mode auto``).

The need is the weights the mode keeps on the GPU plus the largest working set of one stage (the UNet's
denoising step, or the VAE decoding one image), with a margin for the allocator and the kernels'
workspaces. The activation figures are bytes per pixel at 16-bit precision, measured by running each
family's bundled architecture on PyTorch's ``meta`` device and tracking the live tensors
(``tests/unit/test_memory_plan.py`` measures them again, so a changed architecture cannot leave them
stale). With SDPA attention, which every supported build has, they grow linearly with the pixel count.

Pure Python: the runtime passes the component sizes of the loaded model and the free memory it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 2**20
GIB = 2**30

MEMORY_MODES = ("normal", "medvram", "lowvram")  # each keeps less of the model on the GPU than the last

# Live activation bytes at the UNet's peak, per latent pixel per batch item (CFG doubles the batch), fp16.
UNET_BYTES_PER_LATENT_PIXEL = {"sd1": 21_760, "sd2": 21_760, "sdxl": 12_640, "sdxl-refiner": 15_170}
# What one ControlNet unit adds to that peak (its own activations, and the residuals the UNet takes in).
CONTROLNET_BYTES_PER_LATENT_PIXEL = {"sd1": 4_980, "sd2": 4_980, "sdxl": 4_064, "sdxl-refiner": 4_064}
# The VAE decoder's peak per output pixel of one image (Easel decodes a batch one image at a time), fp16.
VAE_DECODE_BYTES_PER_PIXEL = 1_536
# Kernels' workspaces (cuBLAS, cuDNN) and the caching allocator's rounding, on top of the live tensors.
WORKSPACE_BYTES = 512 * MIB
SLACK = 1.2


def architecture(family: str) -> str:
    """The activation table's key for a ``ModelFamily`` value (inpainting and v-prediction change no
    activation shape that matters)."""
    if family == "sdxl-refiner":
        return family
    if family.startswith("sdxl"):
        return "sdxl"
    return "sd2" if family.startswith("sd2") else "sd1"


@dataclass(frozen=True)
class JobShape:
    """What sizes a job's working set: pixels, images per batch, CFG (two UNet passes in one batch),
    ControlNet units, bytes per activation (2 for fp16/bf16, 4 for fp32), those of the VAE's decode (4
    where an fp16 VAE may overflow and decode again in fp32, as SDXL's own VAE does), and the largest image
    the VAE decodes at once (tiled decoding bounds it)."""

    family: str
    width: int
    height: int
    batch: int = 1
    cfg: bool = True
    controlnets: int = 0
    dtype_bytes: int = 2
    decode_bytes: int | None = None  # None: dtype_bytes
    decode_pixels: int | None = None  # None: the whole image


@dataclass(frozen=True)
class ModelParts:
    """Weight bytes of the loaded model's parts (what the memory modes move), and extra weights that stay
    on the GPU for the job (ControlNets, adapters)."""

    unet: int
    text_encoders: int
    vae: int
    extras: int = 0

    @property
    def total(self) -> int:
        return self.unet + self.text_encoders + self.vae + self.extras


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a job needs on the GPU in each memory mode."""

    normal: int
    medvram: int
    lowvram: int
    unet_activations: int
    decode: int
    shape: JobShape

    def in_mode(self, mode: str) -> int:
        return {"normal": self.normal, "medvram": self.medvram, "lowvram": self.lowvram}[mode]


def estimate(parts: ModelParts, shape: JobShape) -> MemoryNeed:
    arch = architecture(shape.family)
    scale = shape.dtype_bytes / 2
    latent_pixels = (shape.width // 8) * (shape.height // 8)
    items = shape.batch * (2 if shape.cfg else 1)
    per_pixel = (
        UNET_BYTES_PER_LATENT_PIXEL[arch] + shape.controlnets * CONTROLNET_BYTES_PER_LATENT_PIXEL[arch]
    )
    unet = int(per_pixel * latent_pixels * items * scale)
    decoded = min(shape.width * shape.height, shape.decode_pixels or shape.width * shape.height)
    decode = int(VAE_DECODE_BYTES_PER_PIXEL * decoded * (shape.decode_bytes or shape.dtype_bytes) / 2)

    def with_margin(resident: int, working: int) -> int:
        return resident + int(working * SLACK) + WORKSPACE_BYTES

    return MemoryNeed(
        normal=with_margin(parts.total, max(unet, decode)),
        # medvram: one part at a time (the UNet with the job's ControlNets, or the VAE, or the encoders)
        medvram=max(
            with_margin(parts.unet + parts.extras, unet),
            with_margin(parts.vae, decode),
            with_margin(parts.text_encoders, 0),
        ),
        # lowvram: the weights stream layer by layer; the activations stay
        lowvram=with_margin(0, max(unet, decode)),
        unet_activations=unet,
        decode=decode,
        shape=shape,
    )


@dataclass(frozen=True)
class MemoryPlan:
    mode: str
    need: MemoryNeed
    available: int
    fits: bool  # False: even lowvram is estimated not to fit (the job still tries it)

    def line(self) -> str:
        """What was chosen and why, for the job's messages."""
        shape = self.need.shape
        full = self.need.normal / GIB
        where = f"{shape.width}×{shape.height}, batch {shape.batch}"
        if self.mode == "normal":
            return (
                f"Memory mode normal: {where} needs about {full:.1f} GiB with the whole model on the GPU; "
                f"{self.available / GIB:.1f} GiB is free."
            )
        chosen = self.need.in_mode(self.mode) / GIB
        how = {
            "medvram": "each part of the model moves to the GPU when it is used",
            "lowvram": "the weights stream to the GPU layer by layer, which is slow",
        }[self.mode]
        text = (
            f"Memory mode {self.mode}: {where} needs about {full:.1f} GiB with the whole model on the GPU "
            f"and {self.available / GIB:.1f} GiB is free, so {how} (about {chosen:.1f} GiB)."
        )
        if not self.fits:
            text += " Even that may not fit: lower the size or batch size if the job runs out of memory."
        return text


def choose_mode(need: MemoryNeed, available: int, ceiling: str = "normal") -> MemoryPlan:
    """The fastest mode, no faster than ``ceiling`` (lowered for the session by an out-of-memory error),
    whose estimate fits in ``available`` bytes; lowvram when none does."""
    for mode in MEMORY_MODES[MEMORY_MODES.index(ceiling) :]:
        if need.in_mode(mode) <= available:
            return MemoryPlan(mode, need, available, True)
    return MemoryPlan("lowvram", need, available, False)
