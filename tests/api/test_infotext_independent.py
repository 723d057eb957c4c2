"""A generated PNG's ``parameters`` chunk read by a small A1111-infotext parser written here from the
format description (not Easel's parser): prompt lines, an optional ``Negative prompt:`` block, then one
line of ``Key: value`` pairs separated by ``, `` where a value containing ``,``, ``:`` or a newline is
JSON-quoted."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui.container import build_services
from webui.settings import Settings

PAIR = re.compile(r'\s*([A-Za-z][\w \-/+()]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111_infotext(text: str) -> dict[str, str]:
    *head, last = text.strip().split("\n")
    pairs = PAIR.findall(last)
    if len(pairs) < 3:  # no parameter line: all of it is prompt
        head, pairs = [*head, last], []
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in head:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].strip()
        target.append(line)
    out = {"prompt": "\n".join(prompt_lines), "negative": "\n".join(negative_lines)}
    for key, value in pairs:
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        out[key.strip()] = value
    return out


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    from webui.server import build_app

    services = build_services(Settings(data_dir=data_dir, preload_model=False, nowebui=True))
    with TestClient(build_app(services)) as client:
        yield client
    services.generation.shutdown()


def test_png_parameters_parse_with_an_independent_parser(client: TestClient) -> None:
    body = {
        "prompt": "a lighthouse, at dusk: (oil painting:1.2)",
        "negative_prompt": "blurry, low quality",
        "steps": 3,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "seed": 4242,
        "width": 64,
        "height": 72,
        "cfg_scale": 6.5,
    }
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    parsed = parse_a1111_infotext(image.info["parameters"])
    assert parsed["prompt"] == body["prompt"]
    assert parsed["negative"] == body["negative_prompt"]
    assert parsed["Steps"] == "3"
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["Seed"] == "4242"
    assert parsed["Size"] == "64x72"
    assert float(parsed["CFG scale"]) == 6.5
    assert parsed["Model"] and parsed["Version"]


def test_the_parser_itself_on_a_hand_written_a1111_infotext() -> None:
    text = (
        "masterpiece, 1girl\nsecond line\nNegative prompt: bad hands\nworse\n"
        'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x768, Lora hashes: "a: 0123, b: 4567"'
    )
    parsed = parse_a1111_infotext(text)
    assert parsed["prompt"] == "masterpiece, 1girl\nsecond line"
    assert parsed["negative"] == "bad hands\nworse"
    assert parsed["Lora hashes"] == "a: 0123, b: 4567" and parsed["Size"] == "512x768"
