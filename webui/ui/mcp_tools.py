"""Easel's MCP tools: txt2img, img2img, the model lists and PNG info for agents (``python app.py --mcp``).

A small Gradio app of ``gr.api`` functions, mounted at :data:`MCP_MOUNT` with Gradio's MCP server on; the
UI's own events never become tools. Each function's type hints and docstring (``Args:``) are its tool schema.
The tools build the same requests as the txt2img / img2img tabs and the REST API and call the same services.

Images: inputs are ``data:`` URLs or raw base64 (Gradio's MCP convention for files), an "Image URL" a tool
returned, or a path inside ``outputs/``; Easel never downloads from other servers. Outputs are MCP image
content (one image, or a grid for a batch) and text: the infotext of each image and a URL to the full file.
Gradio re-encodes image content without its PNG text chunks, so the parameters travel in the text and in
the file behind the URL (which ``png_info`` reads).
"""

# No ``from __future__ import annotations`` here: Gradio reads the tools' return annotations unevaluated
# (``inspect.signature``), and a string would make the (image, text) pair a single output.
import io
import json
import logging
import math
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import gradio as gr
from gradio import processing_utils
from gradio import utils as gradio_utils
from PIL import Image

from webui.domain.controlnet_models import fits
from webui.domain.generation import GenerationParams, GenerationResult, Img2ImgRequest, Txt2ImgRequest
from webui.domain.samplers import resolve_sampler, sampler_names, schedule_labels
from webui.metadata.image_io import read_infotext
from webui.metadata.infotext import parse_infotext
from webui.services.img2img import decode_image, encode_png_b64
from webui.ui.user_errors import user_message

log = logging.getLogger(__name__)

MCP_MOUNT = "/mcp"  # the tools' Gradio app; Gradio serves the MCP endpoint under it
MCP_PATH = f"{MCP_MOUNT}/gradio_api/mcp/"  # streamable HTTP
MCP_SSE_PATH = f"{MCP_MOUNT}/gradio_api/mcp/sse"  # SSE, for older clients
FILE_ROUTE = "/gradio_api/file="
# The fields a checkpoint's defaults set when a tool call leaves them out (request field names).
DEFAULT_FIELDS = ("width", "height", "sampler_name", "scheduler", "steps", "cfg_scale")


def mcp_urls(base_url: str) -> tuple[str, str]:
    """The streamable HTTP and SSE URLs of the MCP server of an Easel served at ``base_url``."""
    base = base_url.rstrip("/")
    return base + MCP_PATH, base + MCP_SSE_PATH


class ToolError(gr.Error):
    """A tool call that cannot run; the MCP client gets the message as an error result."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)

    def __str__(self) -> str:  # gr.Error quotes its message; the agent should read it as written
        return str(self.message)


def build_mcp_blocks(services: Any) -> gr.Blocks:
    """The Gradio app whose ``gr.api`` functions Gradio's MCP server exposes as tools."""
    tools = McpTools(services)
    listing = "\n".join(f"- `{fn.__name__}`: {_summary(fn)}" for fn in tools.functions())
    with gr.Blocks(title="Easel", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# Easel for agents\n"
            f"This is Easel's MCP server. Point an MCP client at `{MCP_PATH}` on this server (streamable "
            f"HTTP) or `{MCP_SSE_PATH}` (SSE); README.md, section *Agents (MCP)*, shows client "
            f"configurations. The tools:\n\n{listing}"
        )
        for fn in tools.functions():
            # queue=False: Gradio's MCP server calls the function in-process; the generation service
            # queues the jobs of the UI, the API and the agents in one line.
            gr.api(fn, api_name=fn.__name__, queue=False)
    return blocks


class McpTools:
    """The tools, as methods bound to the services; :meth:`functions` lists them in the order agents see."""

    def __init__(self, services: Any) -> None:
        self.services = services

    def functions(self) -> list[Any]:
        return [
            self.txt2img,
            self.img2img,
            self.list_checkpoints,
            self.list_loras,
            self.list_controlnets,
            self.png_info,
        ]

    # -- generation -----------------------------------------------------------------------------------------
    def txt2img(
        self,
        prompt: str,
        negative_prompt: str = "",
        steps: int | None = None,
        sampler_name: str | None = None,
        scheduler: str | None = None,
        width: int | None = None,
        height: int | None = None,
        cfg_scale: float | None = None,
        seed: int = -1,
        batch_size: int = 1,
        checkpoint: str | None = None,
        request: gr.Request | None = None,  # filled in by Gradio; not a tool input
    ) -> tuple[dict[str, Any], str]:
        """Generate images from a text prompt with Stable Diffusion (Easel; A1111 prompt syntax).

        Args:
            prompt: What to draw. (word:1.2) emphasises; <lora:name:0.8> adds a LoRA (see list_loras).
            negative_prompt: What to avoid.
            steps: Sampling steps, 1-150. Leave out for the checkpoint's default (A1111's: 20).
            sampler_name: Sampler, one of: {samplers}. Leave out for the checkpoint's default.
            scheduler: Schedule type, one of: {schedules}. Leave out for the checkpoint's default.
            width: Width in pixels, a multiple of 8 (64-4096). Leave out for the checkpoint's default.
            height: Height in pixels, a multiple of 8 (64-4096). Leave out for the checkpoint's default.
            cfg_scale: How strictly to follow the prompt, 0-30. Leave out for the checkpoint's default.
            seed: Random seed; -1 picks one. The same seed and parameters give the same image.
            batch_size: Number of images, 1-16; several come back as one grid image and a URL each.
            checkpoint: A title or name from list_checkpoints; leave out for the selected checkpoint.

        Returns:
            The image (a grid for several) and, as text, each image's infotext (its parameters) and URL.
        """
        fields = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "seed": seed,
            "batch_size": batch_size,
        }
        chosen = {"steps": steps, "sampler_name": sampler_name, "scheduler": scheduler, "width": width,
                  "height": height, "cfg_scale": cfg_scale}  # fmt: skip
        return self._run(Txt2ImgRequest, fields, chosen, checkpoint, request)

    def img2img(
        self,
        image: str,
        prompt: str,
        negative_prompt: str = "",
        denoising_strength: float = 0.75,
        mask: str | None = None,
        steps: int | None = None,
        sampler_name: str | None = None,
        scheduler: str | None = None,
        width: int | None = None,
        height: int | None = None,
        cfg_scale: float | None = None,
        seed: int = -1,
        batch_size: int = 1,
        checkpoint: str | None = None,
        request: gr.Request | None = None,  # filled in by Gradio; not a tool input
    ) -> tuple[dict[str, Any], str]:
        """Redraw an image as a text prompt says (img2img); with a mask, repaint only part of it (inpaint).

        Args:
            image: The start image: a data URL (data:image/png;base64,...), base64, or an Easel Image URL.
            prompt: What the result should show (A1111 syntax, as in txt2img).
            negative_prompt: What to avoid.
            denoising_strength: How much to change, 0-1: 0.3 keeps the picture, 0.75 (default) redraws much.
            mask: Optional inpainting mask of the image's size (same forms): white is repainted, black kept.
            steps: Sampling steps, 1-150. Leave out for the checkpoint's default.
            sampler_name: Sampler, one of: {samplers}. Leave out for the checkpoint's default.
            scheduler: Schedule type, one of: {schedules}. Leave out for the checkpoint's default.
            width: Result width, a multiple of 8. Leave out for the image's width (down to a multiple of 8).
            height: Result height, a multiple of 8. Leave out for the image's height (likewise).
            cfg_scale: How strictly to follow the prompt, 0-30. Leave out for the checkpoint's default.
            seed: Random seed; -1 picks one.
            batch_size: Number of images, 1-16.
            checkpoint: A title or name from list_checkpoints; leave out for the selected checkpoint.

        Returns:
            The image (a grid for several) and, as text, each image's infotext (its parameters) and URL.
        """
        start = self._read_image(image, "image")
        fields: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "seed": seed,
            "batch_size": batch_size,
            "denoising_strength": denoising_strength,
            "init_images": [encode_png_b64(start)],
            "mask": encode_png_b64(self._read_image(mask, "mask")) if mask else None,
        }
        chosen = {
            "steps": steps,
            "sampler_name": sampler_name,
            "scheduler": scheduler,
            "cfg_scale": cfg_scale,
            "width": width or _multiple_of_8(start.width),
            "height": height or _multiple_of_8(start.height),
        }
        return self._run(Img2ImgRequest, fields, chosen, checkpoint, request)

    def _run(
        self,
        cls: type[Txt2ImgRequest] | type[Img2ImgRequest],
        fields: dict[str, Any],
        chosen: dict[str, Any],
        checkpoint: str | None,
        request: gr.Request | None,
    ) -> tuple[dict[str, Any], str]:
        """Build the request as the tabs do, queue it on the generation service, wait, answer."""
        generation = self.services.generation
        opts = self.services.options.get()
        try:
            record = self._checkpoint(checkpoint)
            values = {**self._defaults(record), **{k: v for k, v in chosen.items() if v is not None}}
            resolve_sampler(values.get("sampler_name"), values.get("scheduler"))  # the error lists valid ones
            job = cls(
                **fields,
                **values,
                checkpoint=checkpoint or None,
                clip_skip=opts.CLIP_stop_at_last_layers,
                samples_format=opts.samples_format,
                randn_source=opts.randn_source,
            )
            submit = generation.submit_txt2img if cls is Txt2ImgRequest else generation.submit_img2img
            result: GenerationResult = submit(job).result()
        except Exception as exc:  # the agent gets the message; the server keeps running
            message = user_message(exc)
            log.info("MCP %s failed: %s", cls.__name__, message)
            raise ToolError(message) from exc
        if not result.images:
            raise ToolError("Interrupted before any image was finished.")
        return self._answer(result, request)

    def _answer(self, result: GenerationResult, request: gr.Request | None) -> tuple[dict[str, Any], str]:
        root = _root_url(request)
        fmt = result.request.samples_format
        files = [
            _publish(image.png_bytes or b"", _file_name(image.path, image.seed, fmt))
            for image in result.images
        ]
        shown = files[0]
        if len(files) > 1:
            buffer = io.BytesIO()
            image_grid([Image.open(path) for path in files]).save(buffer, format="PNG")
            shown = _publish(buffer.getvalue(), f"grid-{result.images[0].seed}.png")
        parts: list[str] = []
        if len(files) == 1:  # Gradio gives the image's URL next to it
            parts.append(result.images[0].infotext)
        else:
            for number, (image, path) in enumerate(zip(result.images, files, strict=True), start=1):
                url = f"{root}{FILE_ROUTE}{quote(path)}"
                parts.append(
                    f"Image {number} of {len(files)}, seed {image.seed}. Image URL: {url}\n{image.infotext}"
                )
        if result.interrupted:
            parts.append(f"Interrupted: {len(files)} of {result.request.total_images} images were finished.")
        parts.extend(f"Warning: {warning}" for warning in result.warnings)
        # No url: Gradio adds one and shows it as "Image URL" (an http url here would replace the path).
        return gr.FileData(path=shown, orig_name=Path(shown).name).model_dump(), "\n\n".join(parts)

    def _checkpoint(self, name: str | None) -> Any:
        models = self.services.models
        if name:
            return models.find(name)  # ModelNotFoundError lists the available ones
        return models.default_checkpoint(self.services.options.get().sd_model_checkpoint)

    @staticmethod
    def _defaults(record: Any) -> dict[str, Any]:
        """The fields a call leaves out: the checkpoint's defaults where it declares them, else A1111's."""
        values = {name: GenerationParams.model_fields[name].default for name in DEFAULT_FIELDS}
        if record is not None:
            values.update(checkpoint_defaults(record))
        return values

    # -- reading images -------------------------------------------------------------------------------------
    def _read_image(self, value: str, what: str) -> Image.Image:
        """A data URL or raw base64, an Image URL a tool returned, or a path in outputs/, as a PIL image."""
        text = (value or "").strip()
        if not text:
            raise ToolError(
                f"The {what} is empty: send a data URL (data:image/png;base64,...) or an Image URL."
            )
        path = self._local_file(text)
        if path is not None:
            try:
                with Image.open(path) as opened:
                    opened.load()
                    return opened.copy()  # keeps ``info``: png_info reads the parameters from it
            except OSError as exc:
                raise ToolError(f"The {what} at {text} is not a readable image ({exc}).") from exc
        if text.startswith(("http://", "https://")):
            raise ToolError(
                f"The {what} URL is not one Easel returned, and Easel does not download images from other "
                "servers: send the image itself as a data URL (data:image/png;base64,...)."
            )
        try:
            return decode_image(text, what)
        except ValueError as exc:
            raise ToolError(user_message(exc)) from exc

    def _local_file(self, text: str) -> Path | None:
        """The file an Image URL or an outputs-relative path names, if it lies where Easel keeps images."""
        if text.startswith(("http://", "https://")):
            url_path = unquote(urlparse(text).path)
            if FILE_ROUTE not in url_path:
                return None
            candidate = Path(url_path.split(FILE_ROUTE, 1)[1])
        elif text.startswith("data:") or len(text) > 4096:
            return None
        else:
            candidate = Path(text)
            if not candidate.is_absolute():
                candidate = self.services.settings.outputs_path / candidate
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        roots = [Path(gradio_utils.get_upload_folder()), self.services.settings.outputs_path]
        if resolved.is_file() and any(resolved.is_relative_to(root.resolve()) for root in roots):
            return resolved
        return None

    # -- listings -------------------------------------------------------------------------------------------
    def _selected(self) -> Any:
        return self.services.models.default_checkpoint(self.services.options.get().sd_model_checkpoint)

    def list_checkpoints(self) -> str:
        """List the Stable Diffusion checkpoints Easel can use, with each one's family and defaults.

        Returns:
            JSON: a list of {title, name, family, selected, defaults}; pass a title or name as checkpoint.
        """
        selected = self._selected()
        items = [
            {
                "title": record.title,
                "name": record.model_name,
                "family": record.family.label if record.family else None,
                "selected": selected is not None and record.path == selected.path,
                "defaults": self._defaults(record),
                **({"error": record.family_error} if record.family_error else {}),
            }
            for record in self.services.models.checkpoints()
        ]
        return json.dumps(items, indent=1, ensure_ascii=False)

    def list_loras(self) -> str:
        """List the LoRAs (style and subject add-ons), those that fit the selected checkpoint first.

        Returns:
            JSON: a list of {name, tag, family, fits_selected_checkpoint, trigger_words, activation_text}.
        """
        networks = self.services.networks
        if networks is None:
            return "[]"
        selected = self._selected()
        family = selected.family if selected is not None else None
        items = [
            {
                "name": record.name,
                "tag": f"<lora:{record.name}:{record.preferred_weight:g}>",  # what goes into the prompt
                "family": record.family.label,
                "fits_selected_checkpoint": record.family.fits(family),
                "trigger_words": list(record.trigger_words),
                "activation_text": record.activation_text,
                **({"error": record.error} if record.error else {}),
            }
            for record in networks.loras.records()
        ]
        items.sort(key=lambda item: item["fits_selected_checkpoint"] is False)
        return json.dumps(items, indent=1, ensure_ascii=False)

    def list_controlnets(self) -> str:
        """List the ControlNet models installed, those that fit the selected checkpoint first.

        Returns:
            JSON: a list of {title, name, base, fits_selected_checkpoint}; base is sd1, sd2, sdxl or null.
        """
        controlnet = self.services.controlnet
        if controlnet is None:
            return "[]"
        selected = self._selected()
        family = selected.family.value if selected is not None and selected.family else None
        items = [
            {
                "title": record.title,
                "name": record.model_name,
                "base": record.base,
                "fits_selected_checkpoint": fits(record, family) if family else None,
                **({"error": record.error} if record.error else {}),
            }
            for record in controlnet.records()
        ]
        items.sort(key=lambda item: item["fits_selected_checkpoint"] is False)
        return json.dumps(items, indent=1, ensure_ascii=False)

    def png_info(self, image: str) -> str:
        """Read the generation parameters (A1111 infotext) stored in an image from Easel, A1111 or alike.

        Args:
            image: The image file: a data URL (data:image/png;base64,...), base64, or an Image URL from Easel.

        Returns:
            JSON: {info: the infotext, parameters: its fields by name}; info is empty when there is none.
        """
        text, _items = read_infotext(self._read_image(image, "image"))
        answer: dict[str, Any] = {"info": text or "", "parameters": parse_infotext(text) if text else {}}
        if not text:
            answer["note"] = "This image carries no generation parameters."
        return json.dumps(answer, indent=1, ensure_ascii=False, default=str)


def _document_choices() -> None:
    """Name the valid samplers and schedule types in the tools' parameter descriptions."""
    for method in (McpTools.txt2img, McpTools.img2img):
        method.__doc__ = (
            (method.__doc__ or "")
            .replace("{samplers}", ", ".join(sampler_names()))
            .replace("{schedules}", ", ".join(schedule_labels()))
        )


_document_choices()


def _publish(data: bytes, name: str) -> str:
    """Write ``data`` where Gradio serves files from; the path of the copy."""
    return processing_utils.save_bytes_to_cache(data, name, gradio_utils.get_upload_folder())


def checkpoint_defaults(record: Any) -> dict[str, Any]:
    """The generation defaults ``record`` declares (per-model defaults), by request field name."""
    try:
        from webui.services.model_defaults import checkpoint_defaults as declared
    except ModuleNotFoundError as exc:  # a build without per-model defaults: A1111's apply
        if exc.name != "webui.services.model_defaults":
            raise
        return {}
    values = declared(record).values
    return {name: value for name in DEFAULT_FIELDS if (value := getattr(values, name, None)) is not None}


def image_grid(images: list[Image.Image]) -> Image.Image:
    """The images in a near-square grid (rows filled left to right), cells the size of the largest image."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "black")
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((index % columns) * cell_w, (index // columns) * cell_h))
    return grid


def _summary(fn: Any) -> str:
    """The first line of a tool's docstring."""
    return (fn.__doc__ or "").strip().splitlines()[0]


def _multiple_of_8(size: int) -> int:
    return max(64, size - size % 8)


def _file_name(saved: str | None, seed: int, fmt: str) -> str:
    return Path(saved).name if saved else f"{seed}.{fmt}"


def _root_url(request: gr.Request | None) -> str:
    """Scheme, host and mount path of the tools' app as the caller reached it (``http://host:port/mcp``)."""
    raw = getattr(request, "request", request)  # a gr.Request wraps it; the MCP server passes it bare
    if raw is None:
        return MCP_MOUNT
    from gradio import route_utils

    root = route_utils.get_root_url(request=raw, route_path="/gradio_api/mcp", root_path=None)
    return str(root).rstrip("/")
