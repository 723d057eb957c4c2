"""The sd-webui-controlnet extension's API: units in ``alwayson_scripts.controlnet`` and ``/controlnet/*``.

Shapes follow the extension (see A1111_COMPAT.md §2.3), so clients written for it (webuiapi, scripts,
Krita/Photoshop plug-ins) work unchanged.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from webui.api.routes import ApiError, _validation_message
from webui.domain.controlnet import ControlNetUnit
from webui.domain.controlnet_modules import LAMA_MODULE, UnknownPreprocessorError
from webui.domain.generation import GenerationResult

CONTROLNET_API_VERSION = 3
SCRIPT_TITLE = "controlnet"


def controlnet_units_from_body(alwayson_scripts: dict[str, Any] | None) -> list[ControlNetUnit]:
    """The units of ``alwayson_scripts`` (title matched case-insensitively); 422 for a malformed unit."""
    for title, value in (alwayson_scripts or {}).items():
        if title.strip().lower() != SCRIPT_TITLE:
            continue
        args = value.get("args", []) if isinstance(value, dict) else value
        if not isinstance(args, list):
            raise ApiError(422, "ScriptError", "alwayson_scripts.controlnet.args must be a list of units")
        units = []
        for index, arg in enumerate(args):
            if not isinstance(arg, dict):
                raise ApiError(
                    422, "ScriptError", f"ControlNet unit {index} must be an object with named fields"
                )
            try:
                units.append(ControlNetUnit.model_validate(arg))
            except ValidationError as exc:
                raise ApiError(
                    422, "ValidationError", f"ControlNet unit {index}: {_validation_message(exc)}"
                ) from exc
        return units
    return []


def detected_map_images(result: GenerationResult, services: Any) -> list[str]:
    """The detected maps the extension appends to the response images (unless turned off)."""
    if services.options.get().control_net_no_detectmap:
        return []
    return [base64.b64encode(m.png_bytes).decode("ascii") for m in result.detected_maps if m.returned]


class DetectBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] = Field(default_factory=list)  # an older name of the same field
    controlnet_masks: list[str] = Field(default_factory=list)
    controlnet_processor_res: int = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    low_vram: bool = False


class PosePerson(BaseModel):
    """One person of an OpenPose JSON document: flat ``x, y, confidence`` triples."""

    model_config = ConfigDict(extra="ignore")

    pose_keypoints_2d: list[float]
    hand_right_keypoints_2d: list[float] | None = None
    hand_left_keypoints_2d: list[float] | None = None
    face_keypoints_2d: list[float] | None = None


class PoseData(BaseModel):
    """A pose document: the people and the canvas their coordinates refer to (fractions or pixels)."""

    model_config = ConfigDict(extra="ignore")

    people: list[PosePerson]
    canvas_width: int
    canvas_height: int


def add_controlnet_routes(router: APIRouter, services: Any) -> None:
    controlnet = services.controlnet

    @router.get("/controlnet/version")
    def version() -> dict[str, Any]:
        return {"version": CONTROLNET_API_VERSION}

    @router.get("/controlnet/model_list")
    def model_list(update: bool = True) -> dict[str, Any]:
        if update:
            controlnet.refresh()
        return {"model_list": controlnet.model_list()}

    @router.get("/controlnet/module_list")
    def module_list(alias_names: bool = False) -> dict[str, Any]:
        infos = [controlnet.module_info(name) for name in controlnet.module_names()]  # Easel's, extensions'
        names = [info.label if alias_names else info.name for info in infos]
        detail = {info.label if alias_names else info.name: info.module_detail() for info in infos}
        return {"module_list": names, "module_detail": detail}

    @router.get("/controlnet/control_types")
    def control_types() -> dict[str, Any]:
        return {"control_types": controlnet.control_types()}

    @router.get("/controlnet/settings")
    def settings() -> dict[str, Any]:
        return {"control_net_unit_count": services.options.get().control_net_unit_count}

    @router.post("/controlnet/detect")
    def detect(body: DetectBody) -> dict[str, Any]:
        from webui.services.img2img import decode_image, encode_png_b64

        try:
            info = controlnet.module_info(body.controlnet_module)
        except UnknownPreprocessorError as exc:
            raise ApiError(422, "ModuleError", f"Module not available: {exc}") from exc
        sources = body.controlnet_input_images or body.controlnet_images
        if not sources:
            raise ApiError(422, "ImageError", "No image selected")
        images = [decode_image(data, f"input image {i + 1}") for i, data in enumerate(sources)]
        masks = [decode_image(data, f"mask {i + 1}") for i, data in enumerate(body.controlnet_masks)]
        if info.name == LAMA_MODULE:  # the LaMa fill of each image's mask (the last mask for the rest)
            if not masks:
                raise ApiError(
                    422, "ImageError", f"{LAMA_MODULE} fills a mask: send controlnet_masks (white = fill)."
                )

            def fill() -> list[Any]:
                return [
                    controlnet.lama_fill(image, masks[min(i, len(masks) - 1)])
                    for i, image in enumerate(images)
                ]

            filled = services.generation.submit_call(fill).result()
            return {"images": [encode_png_b64(image) for image in filled], "info": "Success"}

        def run() -> list[Any]:
            return [
                controlnet.detect(
                    info.name,
                    image,
                    body.controlnet_processor_res,
                    body.controlnet_threshold_a,
                    body.controlnet_threshold_b,
                )
                for image in images
            ]

        # On the generation queue: preprocessors share the device with generation.
        maps = services.generation.submit_call(run).result()
        response: dict[str, Any] = {"images": [encode_png_b64(m.image) for m in maps], "info": "Success"}
        if any(m.poses is not None for m in maps):
            response["poses"] = [m.pose_json for m in maps]
        return response

    @router.post("/controlnet/render_openpose_json")
    def render_openpose_json(pose_data: list[PoseData]) -> dict[str, Any]:
        """Draw each pose document as the map OpenPose ControlNets read (the extension's endpoint)."""
        from webui.runtime.controlnet.pose import PoseJsonError, render
        from webui.services.img2img import encode_png_b64

        if not pose_data:
            return {"info": "No pose data detected."}
        try:
            images = [render(pose.model_dump()) for pose in pose_data]
        except PoseJsonError as exc:
            raise ApiError(422, "PoseError", str(exc)) from exc
        return {"images": [encode_png_b64(image) for image in images], "info": "Success"}
