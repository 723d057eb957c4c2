"""A real browser: the ControlNet tab's pose editor adds a person, a dragged point moves in the JSON, and
"Render pose" draws the map; broken JSON gets a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser.conftest import OpenPage, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WRIST = '#easel_pose_canvas circle[data-part="pose_keypoints_2d"][data-index="4"]'


def test_drag_a_point_and_render_the_pose(open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(height=1400)
    page.get_by_role("tab", name="ControlNet", exact=True).click()
    page.locator("#controlnet_pose_accordion").get_by_text("Pose editor", exact=False).first.click()
    # wrong input first: nothing to render yet
    page.click("#controlnet_pose_render")
    wait_for_text(page, "#controlnet_status", "No pose yet", timeout=30_000)
    page.click("#controlnet_pose_add")
    page.wait_for_selector(WRIST, timeout=30_000)
    assert page.locator('#easel_pose_canvas circle[data-part="pose_keypoints_2d"]').count() == 18
    before = json.loads(page.locator("#controlnet_pose_json textarea").input_value())
    box = page.locator(WRIST).bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 40, y - 60, steps=5)
    page.mouse.up()
    page.wait_for_function(
        f"JSON.parse(document.querySelector('#controlnet_pose_json textarea').value)"
        f".people[0].pose_keypoints_2d[12] !== {before['people'][0]['pose_keypoints_2d'][12]}",
        timeout=10_000,
    )
    after = json.loads(page.locator("#controlnet_pose_json textarea").input_value())
    moved_x, moved_y = after["people"][0]["pose_keypoints_2d"][12:14]
    assert moved_x > before["people"][0]["pose_keypoints_2d"][12]
    assert moved_y < before["people"][0]["pose_keypoints_2d"][13]
    assert after["people"][0]["pose_keypoints_2d"][:12] == before["people"][0]["pose_keypoints_2d"][:12]
    page.click("#controlnet_pose_render")
    wait_for_text(page, "#controlnet_status", "Pose rendered: 512x512", timeout=60_000)
    page.wait_for_selector("#controlnet_detected img", timeout=30_000)
    page.screenshot(path=str(tmp_path / "pose-editor.png"), full_page=True)
    page.locator("#controlnet_pose_json textarea").fill('{"people": [')
    page.click("#controlnet_pose_render")
    wait_for_text(page, "#controlnet_status", "not valid JSON", timeout=30_000)
