"""CLIP over HTTP: ``POST /easel/v1/clip/score``, ``GET /easel/v1/clip/models`` and A1111's
``POST /sdapi/v1/interrogate`` (``model: "clip"``; DeepDanbooru is not part of Easel and says so)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from webui.api.routes import ApiError, decode_base64_image
from webui.services.clip import ClipModelError, NoClipModelError

T = TypeVar("T")

INTERROGATE_MODELS = ("clip", "deepdanbooru")


class ClipScoreBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    images: list[str] = Field(description="Images as base64 or data: URLs.", examples=[["iVBORw0KGgo..."]])
    prompt: str = Field(description="The prompt to score against (A1111 syntax; LoRA tags are ignored).")
    model: str | None = Field(None, description="A CLIP model in models/clip; omitted: the CLIP setting's.")
    phrases: bool = Field(True, description="Also score each comma- or BREAK-separated phrase.")


class PhraseScoresResponse(BaseModel):
    text: str
    scores: list[float] = Field(description="The phrase's CLIP score against each image, in order.")


class ClipScoreResponse(BaseModel):
    model: str = Field(description="The CLIP model that scored.")
    scores: list[float] = Field(description="CLIP score per image: max(100 * cos(image, prompt), 0).")
    phrases: list[PhraseScoresResponse]


class ClipModelResponse(BaseModel):
    name: str
    kind: str = Field(description="transformers, openai or open_clip")
    reference: bool = Field(description="Easel's shipped reference CLIP.")
    variant: str | None = Field(description="The published architecture it matches, e.g. ViT-B/32.")
    error: str | None = Field(description="Why it cannot be used; null when it can.")


class InterrogateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: str = Field("", description="The image as base64 or a data: URL.")
    model: str = Field("clip", description="clip (DeepDanbooru is not part of Easel).")


class InterrogateResponse(BaseModel):
    caption: str


def _call(run: Callable[[], T]) -> T:
    """Run a CLIP service call, turning its errors into API errors with clear statuses."""
    try:
        return run()
    except NoClipModelError as exc:
        raise ApiError(409, "NoClipModelError", str(exc)) from exc
    except ClipModelError as exc:
        raise ApiError(409, "ClipModelError", str(exc)) from exc
    except LookupError as exc:
        raise ApiError(404, "ClipModelNotFound", str(exc.args[0] if exc.args else exc)) from exc
    except ValueError as exc:
        raise ApiError(422, "ValueError", str(exc)) from exc


def add_clip_routes(router: APIRouter, services: Any) -> None:
    clip = services.clip

    @router.post("/easel/v1/clip/score", response_model=ClipScoreResponse, tags=["Easel"])
    def clip_score(body: ClipScoreBody) -> dict[str, Any]:
        """CLIP scores of images against a prompt (torchmetrics' CLIPScore), and of each of its phrases."""
        if not body.images:
            raise ApiError(422, "ValueError", "images is empty: send at least one image")
        if not body.prompt.strip():
            raise ApiError(422, "ValueError", "prompt is empty: CLIP scores images against a prompt")
        images = []
        for index, data in enumerate(body.images):
            try:
                images.append(decode_base64_image(data))
            except ApiError as exc:
                raise ApiError(422, exc.error, f"images[{index}]: {exc.detail}") from exc
        result = _call(lambda: clip.score(images, body.prompt, model=body.model, phrases=body.phrases))
        return {
            "model": result.model,
            "scores": list(result.scores),
            "phrases": [{"text": p.text, "scores": list(p.scores)} for p in result.phrases],
        }

    @router.get("/easel/v1/clip/models", response_model=list[ClipModelResponse], tags=["Easel"])
    def clip_models() -> list[dict[str, Any]]:
        """The CLIP models in models/clip, usable or not."""
        return [
            {"name": i.name, "kind": i.kind, "reference": i.reference, "variant": i.variant, "error": i.error}
            for i in clip.models()
        ]

    @router.post("/sdapi/v1/interrogate", response_model=InterrogateResponse)
    def interrogate(body: InterrogateBody) -> dict[str, Any]:
        """A prompt for the image (A1111's Interrogate CLIP), ranked from the phrase lists."""
        model = body.model.strip().lower()
        if model == "deepdanbooru":
            raise ApiError(
                422,
                "ModelNotInstalled",
                'DeepDanbooru is not installed in Easel; use "model": "clip" to interrogate with CLIP.',
            )
        if model != "clip":
            known = 'Easel interrogates with "clip"'
            raise ApiError(404, "ModelNotFound", f"unknown interrogation model {body.model!r}; {known}")
        if not body.image:
            raise ApiError(422, "ImageError", "image is empty: send the image as base64")
        image = decode_base64_image(body.image)
        return {"caption": _call(lambda: clip.interrogate(image))}
