"""``POST /easel/v1/merge``: the checkpoint merger over HTTP (the same service as the merger's tab)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from webui.api.routes import ApiError
from webui.domain.merge import MergeError, MergeNameTakenError
from webui.services.models import ModelNotFoundError


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    primary: str = Field(description="Model A: a checkpoint title, name or hash, as in /sdapi/v1/sd-models.")
    secondary: str | None = Field(None, description="Model B (not used by no_interpolation).")
    tertiary: str | None = Field(None, description="Model C, for add_difference: A + multiplier·(B − C).")
    method: str = Field(
        "weighted_sum",
        description="weighted_sum: (1 − m)·A + m·B; add_difference: A + m·(B − C); no_interpolation: A "
        "as it is (to bake in a VAE or change the precision). A1111's labels ('Weighted sum') work too.",
        examples=["weighted_sum"],
    )
    multiplier: float = Field(0.3, ge=0.0, le=1.0, description="m in the formulas above.")
    name: str = Field(
        "",
        description="The new checkpoint's file name (without .safetensors). An existing name is refused "
        "(409); empty: A1111's name for the merge, e.g. '0.7(a) + 0.3(b)', numbered when taken.",
    )
    precision: str = Field("fp16", description="fp16 or fp32 for every floating tensor of the output.")
    bake_vae: str | None = Field(None, description="A VAE in models/VAE to bake in; null or 'None': none.")
    copy_config: bool = Field(True, description="Copy the first input's <name>.yaml / <name>.json beside it.")


class MergeResponse(BaseModel):
    title: str = Field(description="The new checkpoint's title, as in /sdapi/v1/sd-models.")


def add_merge_routes(router: APIRouter, services: Any) -> None:
    @router.post("/easel/v1/merge", response_model=MergeResponse, tags=["Easel"])
    def merge(body: MergeBody) -> dict[str, Any]:
        """Merge checkpoints into a new .safetensors in models/Stable-diffusion, streamed tensor by tensor,
        with A1111's merge recipe metadata; the new checkpoint is listed at once."""
        if services.merge is None:
            raise ApiError(501, "NotImplementedError", "The checkpoint merger is not available here.")
        vae = body.bake_vae if body.bake_vae not in (None, "", "None") else None
        try:
            title = services.merge.merge(
                body.primary,
                body.secondary or "",
                body.tertiary or None,
                method=body.method,
                multiplier=body.multiplier,
                name=body.name,
                precision=body.precision,
                bake_vae=vae,
                copy_config=body.copy_config,
            )
        except ModelNotFoundError as exc:
            raise ApiError(404, "ModelNotFoundError", str(exc)) from exc
        except MergeNameTakenError as exc:
            raise ApiError(409, "MergeNameTakenError", str(exc)) from exc
        except MergeError as exc:
            raise ApiError(422, "MergeError", str(exc)) from exc
        except OSError as exc:  # the disk, not the request: nothing was written under the new name
            raise ApiError(500, "OSError", f"Could not write the merged checkpoint: {exc}") from exc
        return {"title": title}
