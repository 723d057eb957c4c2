"""What a training run is asked to do, and what it reports: pure data shared by the Train tab, the API and
the training service (``webui.services.training``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TRAIN_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
TRAIN_OPTIMIZERS = ("AdamW", "AdamW8bit", "Adafactor")
# auto: bf16 on a GPU that has it, else the server's --precision (fp32 on the CPU). No plain fp16: its
# updates underflow in the trained weights and its range overflows in the loss.
TRAIN_PRECISIONS = ("auto", "bf16", "fp32")


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"  # stopped by the user: what was learnt is saved
    CANCELLED = "cancelled"  # cancelled by the user: nothing is saved

    @property
    def finished(self) -> bool:
        return self not in (RunState.QUEUED, RunState.RUNNING)


DEFAULT_LEARNING_RATE = {"lora": 1e-4, "embedding": 5e-3, "dreambooth": 2e-6}


class TrainSettings(BaseModel):
    """A run's settings, with the Train tab's defaults. ``resolution`` ``None``: the checkpoint's own size
    (its per-model default width, else its family's: 512, 768 or 1024)."""

    model_config = ConfigDict(extra="ignore")

    @property
    def rate(self) -> float:
        return self.learning_rate or DEFAULT_LEARNING_RATE[self.method]

    @property
    def word(self) -> str:
        """What prompts use: an embedding's name, else the trigger word."""
        return self.name if self.method == "embedding" else self.trigger

    method: Literal["lora", "embedding", "dreambooth"] = Field(
        "lora",
        description="lora (models/Lora), embedding: textual inversion (models/embeddings), or dreambooth: "
        "a full fine-tune saved as a new checkpoint (models/Stable-diffusion).",
    )
    model: str | None = Field(None, description="Checkpoint title or name; the selected one when empty.")
    name: str = Field(description="Output name: models/Lora/<name>.safetensors, used as <lora:name:1>.")
    trigger: str = Field("", description="Trigger word, put in front of captions and used in the fallback.")
    class_word: str = Field("", description="Class word: captions fall back to '<trigger> <class>'.")
    prepend_trigger: bool = Field(False, description="Put the trigger word in front of file captions too.")
    steps: int = Field(1000, ge=1, le=100_000, description="Total optimisation steps.")
    batch_size: int = Field(1, ge=1, le=64)
    resolution: int | None = Field(None, ge=64, le=4096, description="Bucket area is resolution².")
    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(8.0, gt=0)
    learning_rate: float | None = Field(
        None, gt=0, le=1.0, description="Default: 1e-4 (LoRA), 5e-3 (embedding)."
    )
    text_encoder_learning_rate: float = Field(5e-5, gt=0, le=1.0)
    train_text_encoder: bool | None = Field(
        None, description="Also train the text encoder(s); default on for SD 1.x/2.x, off for SDXL."
    )
    schedule: str = Field("constant_with_warmup", description=f"One of {', '.join(TRAIN_SCHEDULES)}.")
    warmup_steps: int = Field(0, ge=0)
    optimizer: str = Field("AdamW", description=f"One of {', '.join(TRAIN_OPTIMIZERS)}.")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    noise_offset: float = Field(0.0, ge=0.0, le=1.0)
    min_snr_gamma: float | None = Field(5.0, ge=0.0)
    flip: bool = Field(False, description="Also train on the mirrored images.")
    gradient_checkpointing: bool = False
    gradient_accumulation: int = Field(
        1, ge=1, le=1024, description="Batches per optimizer step (their gradients averaged)."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPUs that have it, else the server's precision."
    )
    shuffle_captions: bool = False
    keep_tokens: int = Field(0, ge=0)
    vectors: int = Field(4, ge=1, le=75, description="Embedding: vectors per token (A1111's setting).")
    init_text: str = Field("*", description="Embedding: the words its vectors start from.")
    init_from: str | None = Field(
        None,
        description="Embedding: go on training this embedding of models/embeddings (its vectors and step "
        "count; vectors and init_text are then unused). With name equal to it, the trained file replaces it "
        "and the previous version is kept in the run's folder.",
    )
    prior_preservation: bool = Field(
        False, description="DreamBooth: keep the class with images of it drawn by the checkpoint first."
    )
    class_prompt: str = Field(
        "", description="DreamBooth: the class images' prompt; default 'a photo of <class word>'."
    )
    class_images: int = Field(50, ge=1, le=10_000, description="DreamBooth: how many class images.")
    prior_loss_weight: float = Field(1.0, gt=0, le=10.0, description="DreamBooth: the class loss's weight.")
    sample_prompts: list[str] | None = Field(
        None, description="Prompts drawn while training; default: the trigger and class word."
    )
    sample_every: int | None = Field(
        None, ge=0, description="Draw samples every N steps (0: never); default: 4 times in the run."
    )
    sample_seed: int = Field(1, ge=0, le=2**32 - 1)
    sample_steps: int = Field(20, ge=1, le=150)
    sample_cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    sample_sampler: str = "DPM++ 2M"
    sample_scheduler: str = "Karras"


class TrainImageUpload(BaseModel):
    image: str = Field(description="The image as base64 or a data: URL.")
    caption: str | None = Field(None, description="Its caption; the '<trigger> <class>' fallback if empty.")
    name: str | None = Field(None, description="A file name to keep (the image is saved under it).")
