"""``GET /easel/v1/extensions``: every extension Easel found, with its state and any error."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field


class ExtensionInfo(BaseModel):
    name: str = Field(description="The extension's id (its routes are under /ext/<name>/).")
    title: str
    version: str | None
    description: str
    api: int | None = Field(description="The extension API version it was written for.")
    priority: int | None = Field(description="Hooks run in priority order (lower first), then by name.")
    path: str
    bundled: bool = Field(description="Shipped with Easel (else installed by the user).")
    enabled: bool = Field(description="The user's choice (config.json's disabled_extensions).")
    state: str = Field(description="active, disabled, off (a command-line flag) or error.")
    status: str = Field(description="What it does now, or why not; the error message when state is error.")
    error: str | None
    registered: dict[str, Any] = Field(description="What it registered: tabs, scripts, hooks, routes...")


def add_extension_routes(router: APIRouter, services: Any) -> None:
    @router.get("/easel/v1/extensions", response_model=list[ExtensionInfo], tags=["Easel"])
    def extensions() -> list[dict[str, Any]]:
        manager = services.extensions
        return manager.summary() if manager is not None else []
