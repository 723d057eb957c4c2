"""``/sdapi/v1/img2img``, the Extras endpoints and the upscaler lists, in A1111's shapes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from webui.api.extension_scripts import find_extension_script, submit_script
from webui.api.img2img_schemas import (
    ExtrasBaseBody,
    ExtrasBatchBody,
    ExtrasBatchResponse,
    ExtrasSingleBody,
    ExtrasSingleResponse,
    Img2ImgBody,
)
from webui.api.routes import (
    ApiError,
    _b64,
    _validation_message,
    api_user,
    check_scripts,
    keep_overrides,
    response_images,
    result_info,
    txt2img_request,
)
from webui.api.schemas import ImagesResponse
from webui.domain.generation import Img2ImgRequest
from webui.domain.img2img import LATENT_UPSCALE_MODES
from webui.domain.sd_upscale import SD_UPSCALE, ScriptError, find_script, params_from_script_args
from webui.domain.upscalers import ExtrasRequest


def _strip_data_url(data: str) -> str:
    return data.split(",", 1)[1] if data.startswith("data:") and "," in data else data


def img2img_request(body: Img2ImgBody, services: Any) -> Img2ImgRequest:
    if not body.init_images:
        raise ApiError(404, "ImageError", "Init image not found")
    check_scripts(body, "img2img", services)  # an unknown script: 422 listing them all
    sd_upscale = None
    extension_script = find_extension_script(services, "img2img", body.script_name)
    if body.script_name and body.script_name.strip().lower() not in ("", "none") and extension_script is None:
        try:
            if find_script(body.script_name) == SD_UPSCALE:
                sd_upscale = params_from_script_args(body.script_args, services.upscalers.names())
        except ScriptError as exc:
            raise ApiError(422, "ScriptError", str(exc)) from exc
    extra: dict[str, Any] = {
        "sd_upscale": sd_upscale,
        "init_images": [_strip_data_url(image) for image in body.init_images],
        "mask": _strip_data_url(body.mask) if body.mask else None,
        "resize_mode": body.resize_mode,
        "mask_blur": body.mask_blur
        if body.mask_blur is not None
        else max(body.mask_blur_x, body.mask_blur_y),
        "inpainting_fill": body.inpainting_fill,
        "inpaint_full_res": body.inpaint_full_res,
        "inpaint_full_res_padding": body.inpaint_full_res_padding,
        "inpainting_mask_invert": int(body.inpainting_mask_invert),
        "denoising_strength": 0.75 if body.denoising_strength is None else body.denoising_strength,
    }
    request: Img2ImgRequest = txt2img_request(body, services, cls=Img2ImgRequest, extra=extra)
    return request


def _extras_request(body: ExtrasBaseBody, images: list[str], names: list[str]) -> ExtrasRequest:
    try:
        return ExtrasRequest(
            images=[_strip_data_url(image) for image in images],
            names=names,
            resize_mode=body.resize_mode,
            upscaling_resize=body.upscaling_resize,
            upscaling_resize_w=body.upscaling_resize_w,
            upscaling_resize_h=body.upscaling_resize_h,
            upscaling_crop=body.upscaling_crop,
            upscaler_1=body.upscaler_1,
            upscaler_2=body.upscaler_2,
            extras_upscaler_2_visibility=body.extras_upscaler_2_visibility,
            upscale_first=body.upscale_first,
            gfpgan_visibility=body.gfpgan_visibility,
            codeformer_visibility=body.codeformer_visibility,
            codeformer_weight=body.codeformer_weight,
            save_images=False,  # as A1111's API: results are returned, not saved
        )
    except ValidationError as exc:
        raise ApiError(422, "ValidationError", _validation_message(exc)) from exc


def add_image_routes(router: APIRouter, services: Any) -> None:
    generation = services.generation

    @router.post("/sdapi/v1/img2img", response_model=ImagesResponse)
    def img2img(body: Img2ImgBody, http: Request) -> dict[str, Any]:
        request = img2img_request(body, services)
        scripted = submit_script(
            services, "img2img", request, body.script_name, body.script_args, body.force_task_id
        )
        future = scripted or generation.submit_img2img(request, body.force_task_id, api_user(http))
        result = future.result()
        keep_overrides(body, services)
        images = response_images(result, body, services)
        parameters = body.model_dump()
        if not body.include_init_images:
            parameters["init_images"] = None
            parameters["mask"] = None
        parameters.pop("include_init_images", None)
        info_body = {**parameters, "denoising_strength": request.denoising_strength}
        return {"images": images, "parameters": parameters, "info": result_info(result, info_body)}

    @router.post("/sdapi/v1/extra-single-image", response_model=ExtrasSingleResponse)
    def extra_single_image(body: ExtrasSingleBody) -> dict[str, Any]:
        if not body.image:
            raise ApiError(404, "ImageError", "Image not found")
        result = services.extras.run(_extras_request(body, [body.image], []))
        return {"html_info": result.html_info, "image": _b64(result.images[0].png_bytes)}

    @router.post("/sdapi/v1/extra-batch-images", response_model=ExtrasBatchResponse)
    def extra_batch_images(body: ExtrasBatchBody) -> dict[str, Any]:
        if not body.imageList:
            return {"html_info": "", "images": []}
        request = _extras_request(
            body, [item.data for item in body.imageList], [i.name for i in body.imageList]
        )
        result = services.extras.run(request)
        return {"html_info": result.html_info, "images": [_b64(image.png_bytes) for image in result.images]}

    @router.get("/sdapi/v1/upscalers")
    def upscalers() -> list[dict[str, Any]]:
        return [record.api_dict() for record in services.upscalers.available()]

    @router.get("/sdapi/v1/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict[str, Any]]:
        return [{"name": name} for name in LATENT_UPSCALE_MODES]
