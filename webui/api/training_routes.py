"""``/easel/v1/train``: start, follow, stop and cancel training runs (LoRA, embedding), the Train tab's
service; and A1111's ``/sdapi/v1/create/embedding`` and ``/sdapi/v1/train/embedding`` over the same runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from webui.api.routes import ApiError
from webui.domain.training import TrainImageUpload, TrainSettings
from webui.services import limits
from webui.services.training import RunNotFoundError, TrainingRequestError, Upload, decode_image


class TrainRequest(TrainSettings):
    images: list[TrainImageUpload] | None = Field(
        None, description="The dataset as uploaded images with optional captions."
    )
    folder: str | None = Field(
        None,
        description="Or a dataset folder on the server: images with <image>.txt captions, and kohya's "
        "'<repeats>_<trigger> <class>' subfolders.",
    )


class TrainStarted(BaseModel):
    id: str
    state: str
    dataset: dict[str, Any] = Field(description="Pre-flight: images, buckets, the step readout, warnings.")


class TrainRun(BaseModel):
    id: str
    name: str
    method: str
    model: str
    family: str
    state: str = Field(description="queued, running, done, failed, stopped or cancelled.")
    status: str
    step: int
    total: int
    loss: list[float] = Field(description="The loss of every step so far.")
    loss_smoothed: float | None
    eval_loss: list[tuple[int, float]] = Field(
        default_factory=list,
        description="[step, loss] pairs: the loss on a fixed set of the run's images, noise and timesteps, "
        "measured before the first step, about ten times over the run and at its end; it drops as the "
        "model learns (the per-step loss is too noisy to show that).",
    )
    learning_rate: float | None
    steps_per_second: float | None
    eta_seconds: float | None
    samples: list[dict[str, Any]] = Field(
        description="{'step': n, 'images': [file names]}; fetch one at /easel/v1/train/{id}/samples/{file}."
    )
    result: str | None = Field(
        description="The saved file's name (models/Lora, models/embeddings or models/Stable-diffusion; a "
        "DreamBooth of a diffusers folder is a folder), once there is one."
    )
    resumable: bool = Field(
        default=False,
        description="A stopped LoRA or DreamBooth run that kept its training state: POST .../resume goes on.",
    )
    error: str | None
    created: float
    started: float | None
    finished: float | None
    peak_memory: int | None
    dataset: dict[str, Any]
    settings: dict[str, Any]


class TrainRuns(BaseModel):
    runs: list[TrainRun]


class TrainDeleted(BaseModel):
    deleted: str = Field(description="The run's id.")
    freed_bytes: int = Field(description="What its folder took on disk.")


class CreateEmbeddingRequest(BaseModel):
    """A1111's ``/sdapi/v1/create/embedding`` body."""

    name: str
    num_vectors_per_token: int = Field(1, ge=1, le=75)
    overwrite_old: bool = Field(False, description="Replace an embedding of that name (kept in the cache).")
    init_text: str = "*"


class TrainEmbeddingRequest(BaseModel):
    """A1111's ``/sdapi/v1/train/embedding`` body. Easel always buckets by aspect ratio (``varsize``) and
    saves once at the end; fields it has no use for (``log_directory``, ``clip_grad_*``, ``tag_drop_out``,
    ``latent_sampling_method``, ``use_weight``, ``save_embedding_every``, ``template_filename``, ...) are
    accepted and ignored."""

    model_config = {"extra": "ignore"}

    embedding_name: str
    learn_rate: str | float = Field("0.005", description="One rate (A1111's rate schedules are refused).")
    batch_size: int = Field(1, ge=1, le=64)
    gradient_step: int = Field(1, ge=1, le=1024, description="Batches per optimizer step.")
    data_root: str = Field(description="The image folder on the server (<image>.txt captions).")
    training_width: int = Field(512, ge=64, le=4096)
    training_height: int = Field(512, ge=64, le=4096)
    steps: int = Field(100, ge=1, le=100_000)
    shuffle_tags: bool = False
    create_image_every: int = Field(0, ge=0, description="A sample every N steps (0: none).")
    preview_from_txt2img: bool = False
    preview_prompt: str = ""
    preview_negative_prompt: str = ""
    preview_steps: int = Field(20, ge=1, le=150)
    preview_sampler_name: str = "DPM++ 2M"
    preview_cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    preview_seed: int = -1


def embedding_settings(request: TrainEmbeddingRequest) -> TrainSettings:
    """The Easel run an A1111 ``train/embedding`` call asks for (:class:`TrainingRequestError` if none)."""
    try:
        rate = float(request.learn_rate)
    except ValueError:
        raise TrainingRequestError(
            f"learn_rate {request.learn_rate!r}: Easel trains with one learning rate (e.g. 0.005) and a "
            "schedule of its own (POST /easel/v1/train: schedule, warmup_steps), not A1111's rate:step lists"
        ) from None
    side = round((request.training_width * request.training_height) ** 0.5 / 64) * 64
    samples: dict[str, Any] = {"sample_every": request.create_image_every}
    if request.preview_from_txt2img and request.preview_prompt.strip():
        samples.update(
            sample_prompts=[request.preview_prompt],
            sample_steps=request.preview_steps,
            sample_cfg_scale=request.preview_cfg_scale,
            sample_sampler=request.preview_sampler_name,
            sample_seed=max(0, request.preview_seed),
        )
    return TrainSettings(
        method="embedding", name=request.embedding_name, init_from=request.embedding_name,
        learning_rate=rate, batch_size=request.batch_size, gradient_accumulation=request.gradient_step,
        resolution=max(64, side), steps=request.steps, shuffle_captions=request.shuffle_tags,
        schedule="constant", **samples,
    )  # fmt: skip


def add_training_routes(router: APIRouter, services: Any) -> None:
    def service() -> Any:
        if services.training is None:
            raise ApiError(501, "NotImplementedError", "Training is not available in this setup.")
        return services.training

    def run_or_404(run_id: str) -> Any:
        try:
            return service().get(run_id)
        except RunNotFoundError as exc:
            raise ApiError(404, "NotFound", str(exc)) from exc

    @router.post("/easel/v1/train", response_model=TrainStarted, tags=["Easel"])
    def train(request: TrainRequest) -> dict[str, Any]:
        """Start a training run (it waits in the generation queue while the device is busy)."""
        try:
            uploads = [
                Upload(item.name or f"image-{index + 1:03d}.png", decode_image(item.image), item.caption)
                for index, item in enumerate(request.images or [])
            ]
            settings = TrainSettings.model_validate(request.model_dump(exclude={"images", "folder"}))
            run = service().start(
                settings, folder=Path(request.folder) if request.folder else None, uploads=uploads
            )
        except limits.LimitError as exc:
            raise ApiError(exc.status, "LimitError", str(exc)) from exc
        except TrainingRequestError as exc:
            raise ApiError(422, "TrainingRequestError", str(exc)) from exc
        return {"id": run.id, "state": run.state.value, "dataset": run.summary}

    @router.get("/easel/v1/train", response_model=TrainRuns, tags=["Easel"])
    def runs() -> dict[str, Any]:
        """Every training run Easel remembers, newest first."""
        return {"runs": [run.to_json() for run in service().list()]}

    @router.get("/easel/v1/train/{run_id}", response_model=TrainRun, tags=["Easel"])
    def run_state(run_id: str) -> dict[str, Any]:
        """A run's state, progress, loss curve, samples and result."""
        return run_or_404(run_id).to_json()  # type: ignore[no-any-return]

    @router.post("/easel/v1/train/{run_id}/stop", response_model=TrainRun, tags=["Easel"])
    def stop(run_id: str) -> dict[str, Any]:
        """Stop now and save what was learnt (a queued run is cancelled)."""
        run_or_404(run_id)
        return service().stop(run_id).to_json()  # type: ignore[no-any-return]

    @router.post("/easel/v1/train/{run_id}/resume", response_model=TrainRun, tags=["Easel"])
    def resume(run_id: str) -> dict[str, Any]:
        """Go on with a stopped LoRA or DreamBooth run from the step it stopped at (optimizer, schedule and
        data order as if it had never stopped); its file is replaced when it ends."""
        run_or_404(run_id)
        try:
            return service().resume(run_id).to_json()  # type: ignore[no-any-return]
        except TrainingRequestError as exc:
            raise ApiError(422, "TrainingRequestError", str(exc)) from exc

    @router.post("/easel/v1/train/{run_id}/cancel", response_model=TrainRun, tags=["Easel"])
    def cancel(run_id: str) -> dict[str, Any]:
        """Cancel: the run ends and nothing of it is kept in models/."""
        run_or_404(run_id)
        return service().cancel(run_id).to_json()  # type: ignore[no-any-return]

    @router.delete("/easel/v1/train/{run_id}", response_model=TrainDeleted, tags=["Easel"])
    def delete(run_id: str) -> dict[str, Any]:
        """Delete a finished run's folder (its dataset copy, samples and saved training state); the LoRA,
        embedding or checkpoint it saved stays in models/. A queued or running run is refused (422)."""
        run_or_404(run_id)
        try:
            return {"deleted": run_id, "freed_bytes": service().delete(run_id)}
        except TrainingRequestError as exc:
            raise ApiError(422, "TrainingRequestError", str(exc)) from exc

    @router.get("/easel/v1/train/{run_id}/samples/{file_name}", tags=["Easel"])
    def sample(run_id: str, file_name: str) -> FileResponse:
        """One sample image of a run, as PNG."""
        run_or_404(run_id)
        try:
            path = service().sample_path(run_id, file_name)
        except FileNotFoundError as exc:
            raise ApiError(404, "NotFound", str(exc)) from exc
        return FileResponse(path, media_type="image/png")

    @router.post("/sdapi/v1/create/embedding", tags=["A1111"])
    def create_embedding(request: CreateEmbeddingRequest) -> dict[str, Any]:
        """A new embedding from the selected checkpoint's token embeddings of ``init_text`` (A1111's answer:
        ``{"info": "create embedding filename: ..."}``, or ``"create embedding error: ..."``)."""
        try:
            path = service().create_embedding(
                request.name, vectors=request.num_vectors_per_token, init_text=request.init_text,
                overwrite=request.overwrite_old,
            )  # fmt: skip
        except TrainingRequestError as exc:
            return {"info": f"create embedding error: {exc}"}
        return {"info": f"create embedding filename: {path}"}

    @router.post("/sdapi/v1/train/embedding", tags=["A1111"])
    def train_embedding(request: TrainEmbeddingRequest) -> dict[str, Any]:
        """Train an existing embedding on a server folder and answer when it ends, as A1111 does
        (``{"info": "train embedding complete: filename: ... error: ..."}``). The run is an ordinary training
        run meanwhile: in ``GET /easel/v1/train``, in the progress, stoppable; the previous file is kept in
        the run's folder."""
        try:
            settings = embedding_settings(request)
            run = service().start(settings, folder=Path(request.data_root))
        except (TrainingRequestError, ValueError) as exc:
            return {"info": f"train embedding error: {exc}"}
        run = service().wait(run.id)
        filename = service().embeddings_dir / run.result if run.result else ""
        error = run.error or (None if run.state.value in ("done", "stopped") else run.state.value)
        return {"info": f"train embedding complete: filename: {filename} error: {error}"}
