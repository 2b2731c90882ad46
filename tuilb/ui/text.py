"""Untrusted text on the way to the screen.

Names and addresses come from config files, and later header values and paths come off
the network. Everything shown is built as `rich.text.Text` (never parsed as markup), and
control characters are made visible instead of reaching the terminal.
"""

from __future__ import annotations

from rich.text import Text

_VISIBLE = {c: f"\\x{c:02x}" for c in range(0x20)} | {0x7F: "\\x7f"}
_VISIBLE |= {c: f"\\x{c:02x}" for c in range(0x80, 0xA0)}  # C1 controls (CSI etc.)


def clean(value: object) -> str:
    """The text of `value` with every control character shown as an escape."""
    return str(value).translate(_VISIBLE)


def safe(value: object, style: str = "") -> Text:
    """A Text that shows `value` literally: no markup, no escape sequences."""
    return Text(clean(value), style=style, no_wrap=True)
