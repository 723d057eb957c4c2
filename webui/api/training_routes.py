"""``/easel/v1/train``: start, follow, stop and cancel training runs (LoRA), the Train tab's service."""

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
    learning_rate: float | None
    steps_per_second: float | None
    eta_seconds: float | None
    samples: list[dict[str, Any]] = Field(
        description="{'step': n, 'images': [file names]}; fetch one at /easel/v1/train/{id}/samples/{file}."
    )
    result: str | None = Field(description="The saved file's name in models/Lora, once there is one.")
    error: str | None
    created: float
    started: float | None
    finished: float | None
    peak_memory: int | None
    dataset: dict[str, Any]
    settings: dict[str, Any]


class TrainRuns(BaseModel):
    runs: list[TrainRun]


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
        """Go on with a stopped LoRA run from the step it stopped at (optimizer, schedule and data order as
        if it had never stopped); its file is replaced when it ends."""
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

    @router.get("/easel/v1/train/{run_id}/samples/{file_name}", tags=["Easel"])
    def sample(run_id: str, file_name: str) -> FileResponse:
        """One sample image of a run, as PNG."""
        run_or_404(run_id)
        try:
            path = service().sample_path(run_id, file_name)
        except FileNotFoundError as exc:
            raise ApiError(404, "NotFound", str(exc)) from exc
        return FileResponse(path, media_type="image/png")
