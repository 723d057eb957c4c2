"""``GET /easel/v1/history``: the image history for clients, newest first, searched, filtered and paged."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from webui.api.routes import ApiError
from webui.services.history import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, HistoryQuery


class HistoryItemResponse(BaseModel):
    path: str = Field(description="The image file, relative to the outputs folder ('/' separators).")
    prompt: str
    negative_prompt: str
    seed: int | None
    model: str | None
    created: str = Field(description="When the image was made, ISO 8601 with the server's UTC offset.")
    kind: str = Field(description="txt2img, img2img, extras, grid, controlnet, or the top folder's name.")
    sampler: str | None
    width: int | None
    height: int | None
    loras: list[str]
    favourite: bool
    infotext: str


class HistoryResponse(BaseModel):
    total: int = Field(description="How many images match, over all pages.")
    page: int
    page_size: int
    items: list[HistoryItemResponse]


def add_history_routes(router: APIRouter, services: Any) -> None:
    @router.get("/easel/v1/history", response_model=HistoryResponse, tags=["Easel"])
    def history(
        q: Annotated[str, Query(description="Words of the prompt (each matches as a word prefix).")] = "",
        model: Annotated[str | None, Query(description="Model name, as the infotext's 'Model'.")] = None,
        lora: Annotated[str | None, Query(description="A LoRA name used in the image.")] = None,
        sampler: Annotated[str | None, Query(description="Sampler name, e.g. 'Euler a'.")] = None,
        size: Annotated[str | None, Query(description="Pixel size, e.g. '512x768'.")] = None,
        date_from: Annotated[date | None, Query(description="First day, YYYY-MM-DD (server time).")] = None,
        date_to: Annotated[date | None, Query(description="Last day, YYYY-MM-DD, included.")] = None,
        favourite: Annotated[bool, Query(description="Only favourites.")] = False,
        kind: Annotated[str | None, Query(description="txt2img, img2img, extras, grid, controlnet.")] = None,
        page: Annotated[int, Query(ge=1, description="1 is the newest page.")] = 1,
        page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    ) -> dict[str, Any]:
        """Images under the outputs folder, newest first, from Easel's history index."""
        if services.history is None:
            raise ApiError(501, "NotImplementedError", "The image history is not available in this setup.")
        try:
            query = HistoryQuery(
                text=q, model=model or None, lora=lora or None, sampler=sampler or None, size=size or None,
                date_from=date_from, date_to=date_to, favourite=favourite, kind=kind or None, page=page,
                page_size=page_size,
            )  # fmt: skip
        except ValueError as exc:
            raise ApiError(422, "RequestValidationError", str(exc)) from exc
        result = services.history.search(query)
        return {
            "total": result.total,
            "page": result.page,
            "page_size": result.page_size,
            "items": [item.to_json() for item in result.items],
        }
