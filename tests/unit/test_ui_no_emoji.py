"""No emoji in the UI: an emoji label renders as an empty box in a browser without an emoji font."""

from __future__ import annotations

import re
from pathlib import Path

UI = Path(__file__).resolve().parents[2] / "webui" / "ui"

# Pictographs (U+1F000-1FAFF), miscellaneous symbols and dingbats (U+2600-27BF), the emoji variation
# selector U+FE0F, and the few arrows and technical symbols that browsers draw as emoji (U+2194-2199
# diagonal arrows, U+21A9-21AA, U+231A-231B watch and hourglass, U+2328, U+23CF-23FA media symbols,
# U+2B05-2B07, U+2B1B-2B1C, U+2B50, U+2B55). Plain arrows such as U+2192 render in every font.
EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328"
    "\u23cf-\u23fa\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55]"
)


def emoji_in(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` for each line of ``text`` holding an emoji code point."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if EMOJI.search(line)]


def test_the_scan_finds_emoji() -> None:
    assert emoji_in('status = "\u2705 Loaded"') == [(1, 'status = "\u2705 Loaded"')]
    assert emoji_in('warn = "\u26a0\ufe0f"\nok = "Error:"\nrefresh = "\U0001f504"') == [
        (1, 'warn = "\u26a0\ufe0f"'),
        (3, 'refresh = "\U0001f504"'),
    ]
    assert emoji_in("paste = '\u2199'")  # A1111's paste arrow: an icon here
    assert emoji_in("Step 3/20 \u00b7 42% \u00b7 ETA 4s \u2014 done\u2026 \u2192 img2img") == []


def test_ui_sources_hold_no_emoji() -> None:
    files = sorted([*UI.rglob("*.py"), *UI.rglob("*.js"), *UI.rglob("*.css")])
    assert any(path.name == "txt2img.py" for path in files)
    found = {
        f"{path.relative_to(UI)}:{number}": line
        for path in files
        if path.name != "icons.py"  # its docstring names the emoji it replaces
        for number, line in emoji_in(path.read_text(encoding="utf-8"))
    }
    assert found == {}, "emoji in the UI source (use webui/ui/icons.py or plain text):\n" + "\n".join(
        f"{where}: {line}" for where, line in found.items()
    )


def test_icons_module_uses_no_emoji_outside_its_docstring() -> None:
    text = (UI / "icons.py").read_text(encoding="utf-8")
    code = text.split('"""', 2)[2]  # everything after the module docstring
    assert emoji_in(code) == []
