"""The MCP server (``python app.py --mcp``), driven by the ``mcp`` Python client over streamable HTTP.

One app process serves every test of the module: it holds Easel's reference checkpoint, LoRA and ControlNet,
and generates at 64x64 (the reference model's size) with a few steps. The in-process tests at the end check
what needs no generation: --api-auth in front of the tools, and the tools' app with --nowebui.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.app_process import running_easel

pytest.importorskip("mcp")

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
TOOLS = {"txt2img", "img2img", "list_checkpoints", "list_loras", "list_controlnets", "png_info"}
PROMPT = "a red circle on a blue background"


def _reference_data_dir(root: Path) -> Path:
    """A data dir whose model folders hold (links to) Easel's reference checkpoint, LoRA and ControlNet."""
    for folder, name in (
        ("Stable-diffusion", "easel-reference"),
        ("Lora", "easel-reference-grayscale.safetensors"),
        ("ControlNet", "easel-reference-edges"),
    ):
        source = MODELS / folder / name
        if not source.exists():
            pytest.skip(f"the reference model {source} is missing")
        (root / "models" / folder).mkdir(parents=True)
        (root / "models" / folder / name).symlink_to(source)
    sidecar = MODELS / "Stable-diffusion" / "easel-reference.json"  # the checkpoint's declared defaults
    if sidecar.exists():
        (root / "models" / "Stable-diffusion" / sidecar.name).symlink_to(sidecar)
    return root


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = _reference_data_dir(tmp_path_factory.mktemp("mcp-data"))
    with running_easel(data_dir, "--mcp") as base:
        url = f"{base}/mcp/gradio_api/mcp/"
        # The URL printed at start is the one that works (printed just after the studio turns ready).
        deadline = time.monotonic() + 10
        while url not in (data_dir / "app.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert url in (data_dir / "app.log").read_text()
        yield url


def _session(url: str, work: Any) -> Any:
    """Run ``await work(session)`` in an initialised MCP client session and return its result."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def main() -> Any:
        async with (
            streamablehttp_client(url, timeout=30, sse_read_timeout=600) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return asyncio.run(main())


def _call(url: str, tool: str, arguments: dict[str, Any]) -> Any:
    async def work(session: Any) -> Any:
        return await session.call_tool(tool, arguments)

    return _session(url, work)


def _texts(result: Any) -> list[str]:
    return [item.text for item in result.content if item.type == "text"]


def _images(result: Any) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(item.data))) for item in result.content if item.type == "image"
    ]


def _image_url(result: Any) -> str:
    """The URL Gradio gives next to the returned image."""
    lines = [text for text in _texts(result) if text.startswith("Image URL: ")]
    assert lines, _texts(result)
    return lines[0].removeprefix("Image URL: ").strip()


@pytest.mark.slow
def test_lists_exactly_the_easel_tools_with_descriptions_and_schemas(mcp_url: str) -> None:
    async def work(session: Any) -> Any:
        return await session.list_tools()

    tools = {tool.name: tool for tool in _session(mcp_url, work).tools}
    assert set(tools) == TOOLS  # no UI event (generate, interrupt, pnginfo, refresh...) is a tool
    for tool in tools.values():
        assert tool.description and len(tool.description) > 30, tool.name
        assert tool.inputSchema["type"] == "object"
    txt2img = tools["txt2img"].inputSchema
    assert txt2img["required"] == ["prompt"]
    assert set(txt2img["properties"]) == {
        "prompt", "negative_prompt", "steps", "sampler_name", "scheduler", "width", "height", "cfg_scale",
        "seed", "batch_size", "checkpoint",
    }  # fmt: skip
    assert txt2img["properties"]["seed"]["type"] == "integer"
    assert txt2img["properties"]["seed"]["default"] == -1
    # Gradio took each parameter's description from the docstring's Args: section.
    assert "Euler a" in txt2img["properties"]["sampler_name"]["description"]
    assert "multiple of 8" in txt2img["properties"]["width"]["description"]
    img2img = tools["img2img"].inputSchema
    assert set(img2img["required"]) == {"image", "prompt"}
    assert "data:image/png;base64" in img2img["properties"]["image"]["description"]
    assert tools["png_info"].inputSchema["required"] == ["image"]
    assert tools["list_checkpoints"].inputSchema.get("properties") == {}


@pytest.mark.slow
def test_txt2img_gives_the_image_and_its_infotext_that_png_info_and_img2img_take_back(mcp_url: str) -> None:
    arguments = {
        "prompt": PROMPT,
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 1234,
        "sampler_name": "Euler",
    }
    result = _call(mcp_url, "txt2img", arguments)
    assert not result.isError, _texts(result)
    (image,) = _images(result)
    assert image.size == (64, 64)
    infotext = _texts(result)[-1]
    assert infotext.startswith(PROMPT + "\n")
    assert "Steps: 3" in infotext and "Seed: 1234" in infotext and "Sampler: Euler" in infotext
    assert "Size: 64x64" in infotext and "Model: easel-reference" in infotext

    # The URL serves the file with its parameters; png_info reads them from the URL and from the bytes.
    url = _image_url(result)
    with urllib.request.urlopen(url, timeout=30) as response:
        data = response.read()
    for image_argument in (url, "data:image/png;base64," + base64.b64encode(data).decode()):
        info = _call(mcp_url, "png_info", {"image": image_argument})
        assert not info.isError, _texts(info)
        answer = json.loads(_texts(info)[0])
        assert answer["info"] == infotext
        assert answer["parameters"]["Seed"] in ("1234", 1234)
        assert answer["parameters"]["Prompt"] == PROMPT

    # img2img starts from the returned image; its size is the default size of the result.
    redrawn = _call(mcp_url, "img2img", {"image": url, "prompt": "a green square", "steps": 3, "seed": 5})
    assert not redrawn.isError, _texts(redrawn)
    assert [image.size for image in _images(redrawn)] == [(64, 64)]
    assert "Denoising strength: 0.75" in _texts(redrawn)[-1]


@pytest.mark.slow
def test_a_batch_comes_back_as_one_grid_and_a_url_per_image(mcp_url: str) -> None:
    arguments = {"prompt": PROMPT, "width": 64, "height": 64, "steps": 2, "seed": 10, "batch_size": 3}
    result = _call(mcp_url, "txt2img", arguments)
    assert not result.isError, _texts(result)
    assert [image.size for image in _images(result)] == [(128, 128)]  # 2x2 cells of 64x64
    text = _texts(result)[-1]
    for number, seed in enumerate((10, 11, 12), start=1):
        assert f"Image {number} of 3, seed {seed}. Image URL: http://" in text
        assert f"Seed: {seed}" in text


@pytest.mark.slow
def test_listings_name_the_reference_models(mcp_url: str) -> None:
    checkpoints = json.loads(_texts(_call(mcp_url, "list_checkpoints", {}))[0])
    assert [item["name"] for item in checkpoints] == ["easel-reference"]
    assert checkpoints[0]["selected"] is True and checkpoints[0]["family"] == "SD 1.x"
    assert {"width", "height", "steps", "sampler_name", "scheduler", "cfg_scale"} <= set(
        checkpoints[0]["defaults"]
    )
    loras = json.loads(_texts(_call(mcp_url, "list_loras", {}))[0])
    assert [item["tag"] for item in loras] == ["<lora:easel-reference-grayscale:1>"]
    assert loras[0]["fits_selected_checkpoint"] is True
    controlnets = json.loads(_texts(_call(mcp_url, "list_controlnets", {}))[0])
    assert [item["name"] for item in controlnets] == ["easel-reference-edges"]


@pytest.mark.slow
def test_left_out_fields_take_the_checkpoints_declared_defaults(mcp_url: str) -> None:
    pytest.importorskip("webui.services.model_defaults")
    if not (MODELS / "Stable-diffusion" / "easel-reference.json").exists():
        pytest.skip("the reference model declares no defaults")
    (checkpoint,) = json.loads(_texts(_call(mcp_url, "list_checkpoints", {}))[0])
    assert (checkpoint["defaults"]["width"], checkpoint["defaults"]["height"]) == (64, 64)
    result = _call(mcp_url, "txt2img", {"prompt": PROMPT, "steps": 2})
    assert not result.isError, _texts(result)
    assert [image.size for image in _images(result)] == [(64, 64)]


@pytest.mark.slow
def test_bad_input_is_an_error_result_with_a_clear_message_and_the_server_keeps_serving(mcp_url: str) -> None:
    small = {"prompt": PROMPT, "width": 64, "height": 64, "steps": 2}
    cases = [
        ("txt2img", {**small, "sampler_name": "Nope"}, ["Unknown sampler 'Nope'", "Euler a", "DPM++ 2M"]),
        ("txt2img", {**small, "width": 65}, ["Width", "multiple of 8"]),
        (
            "txt2img",
            {**small, "checkpoint": "no-such-model"},
            ["'no-such-model' not found", "easel-reference"],
        ),
        ("img2img", {"image": "https://example.com/cat.png", "prompt": "x"}, ["does not download"]),
        ("img2img", {"image": "not an image", "prompt": "x"}, ["not a readable image"]),
        (
            "png_info",
            {"image": str(ROOT / "README.md")},
            ["not a readable image"],
        ),  # outside outputs/: base64
    ]
    for tool, arguments, expected in cases:
        result = _call(mcp_url, tool, arguments)
        assert result.isError, (tool, arguments, _texts(result))
        message = " ".join(_texts(result))
        for part in expected:
            assert part in message, (tool, arguments, message)
    assert not _call(mcp_url, "list_checkpoints", {}).isError


@pytest.mark.slow
def test_api_auth_guards_the_tools_and_the_tools_app_serves_without_the_ui(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from webui.container import build_services
    from webui.server import build_app
    from webui.settings import Settings

    services = build_services(
        Settings(data_dir=tmp_path, mcp=True, nowebui=True, api_auth="agent:secret", preload_model=False)
    )
    try:
        with TestClient(build_app(services)) as client:
            assert client.get("/mcp/gradio_api/mcp/schema").status_code == 401
            assert client.get("/mcp/gradio_api/mcp/schema", auth=("agent", "wrong")).status_code == 401
            answer = client.get("/mcp/gradio_api/mcp/schema", auth=("agent", "secret"))
            assert answer.status_code == 200
            assert {tool["name"] for tool in answer.json()} == TOOLS
            assert client.get("/sdapi/v1/samplers", auth=("agent", "secret")).status_code == 200
    finally:
        services.generation.shutdown()


def test_the_mcp_flag() -> None:
    from webui.cli import build_parser, settings_from_args

    assert settings_from_args(["--mcp"]).mcp is True
    assert settings_from_args([]).mcp is False
    assert "--mcp" in build_parser().format_help()


def test_image_arguments_are_read_only_from_where_easel_keeps_images(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from PIL import PngImagePlugin

    from webui.ui.mcp_tools import McpTools, ToolError

    outputs = tmp_path / "outputs"
    (outputs / "txt2img-images").mkdir(parents=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 5, Seed: 9, Size: 64x64")
    for path in (outputs / "txt2img-images" / "00001-9.png", tmp_path / "private.png"):
        Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    tools = McpTools(SimpleNamespace(settings=SimpleNamespace(outputs_path=outputs)))

    assert json.loads(tools.png_info("txt2img-images/00001-9.png"))["parameters"]["Seed"] in ("9", 9)
    private = str(tmp_path / "private.png")
    for outside in ("../private.png", private, f"http://127.0.0.1:9/mcp/gradio_api/file={private}"):
        with pytest.raises(ToolError):
            tools.png_info(outside)
