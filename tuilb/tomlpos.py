"""Find the line of a key path in TOML text, so config problems can say where they are.

tomllib gives values but no positions. This scanner reads only what it needs (table
headers, array-of-table headers and `key =` lines) and maps each resolved key path to
its line. It is a locator, not a parser: when it cannot tell, the line is simply unknown.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(#.*)?$")
_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")


def _split_key(dotted: str) -> list[str]:
    parts: list[str] = []
    for m in re.finditer(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)", dotted):
        parts.append(next(g for g in m.groups() if g is not None))
    return parts


def key_lines(text: str) -> dict[Path, int]:
    """Map every table header and key path found in `text` to its 1-based line number."""
    lines: dict[Path, int] = {}
    array_len: dict[Path, int] = {}
    current: Path = ()
    in_multiline = False
    # TOML ends lines only at \n; str.splitlines() would also split at U+2028 and others.
    for number, raw in enumerate(text.split("\n"), start=1):
        # Skip the inside of multi-line strings; their lines are values, not keys.
        if raw.count('"""') % 2 == 1 or raw.count("'''") % 2 == 1:
            in_multiline = not in_multiline
            if not in_multiline:
                continue
        elif in_multiline:
            continue
        header = _HEADER.match(raw)
        if header and not _KEY.match(raw):
            is_array = header.group(1) == "[["
            resolved: list[str | int] = []
            names = _split_key(header.group(2))
            for i, name in enumerate(names):
                resolved.append(name)
                last = i == len(names) - 1
                key = tuple(resolved)
                if last and is_array:
                    index = array_len.get(key, 0)
                    array_len[key] = index + 1
                    lines.setdefault(key, number)  # the array itself: its first table
                    resolved.append(index)
                elif key in array_len:
                    resolved.append(array_len[key] - 1)
            current = tuple(resolved)
            lines.setdefault(current, number)
            continue
        assignment = _KEY.match(raw)
        if assignment:
            path = current + tuple(_split_key(assignment.group(1)))
            lines.setdefault(path, number)
    return lines


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of `path`, or of its nearest enclosing key or table that has one."""
    for end in range(len(path), 0, -1):
        found = lines.get(path[:end])
        if found is not None:
            return found
    return None
