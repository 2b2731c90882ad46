"""Persistent runtime state: what operators changed (admin state, weight) survives a
restart. Kept in a small JSON file (`[state] file`), written atomically (a temporary file
renamed over the old one) after each operator change, and re-applied at start. Only
values that differ from the configuration are kept, so `reset` empties a backend's entry.
A file that cannot be read or parsed is reported and ignored: never fatal.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from tuilb.model import AdminState, Model

VERSION = 1


def overrides(model: Model) -> dict[str, dict[str, Any]]:
    """`{"pool/backend": {"state": ..., "weight": ...}}` for every value an operator set
    away from the configuration."""
    out: dict[str, dict[str, Any]] = {}
    for pool in model.pools.values():
        for b in pool.backends:
            entry: dict[str, Any] = {}
            if b.admin is not AdminState.READY:
                entry["state"] = str(b.admin)
            if b.weight != b.config.weight:
                entry["weight"] = b.weight
            if entry:
                out[b.target] = entry
    return out


def encode(model: Model) -> str:
    return json.dumps({"version": VERSION, "backends": overrides(model)}, indent=1) + "\n"


def decode(text: str) -> dict[str, dict[str, Any]]:
    """The backends' overrides from a state file's text; ValueError saying what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"not a tuilb state file of version {VERSION}")
    backends = data.get("backends")
    if not isinstance(backends, dict) or not all(isinstance(v, dict) for v in backends.values()):
        raise ValueError("'backends' must map POOL/BACKEND to a table")
    return backends


def restore(model: Model, backends: dict[str, dict[str, Any]]) -> list[str]:
    """Re-apply saved overrides; returns a line for each one applied or skipped."""
    notes: list[str] = []
    states = {str(s): s for s in AdminState}
    for target, entry in backends.items():
        try:
            backend = model.backend(target)
        except KeyError:
            notes.append(f"{target}: not in the configuration any more, skipped")
            continue
        state = entry.get("state")
        if state is not None:
            if state in states:
                model.set_admin(backend, states[state], "state file: restored")
                notes.append(f"{target}: {state} (restored)")
            else:
                notes.append(f"{target}: unknown state {state!r}, skipped")
        weight = entry.get("weight")
        if weight is not None:
            if isinstance(weight, int) and not isinstance(weight, bool) and 0 <= weight <= 256:
                model.set_weight(backend, weight, "state file: restored")
                notes.append(
                    f"{target}: weight {weight} (restored; config {backend.config.weight})"
                )
            else:
                notes.append(f"{target}: bad weight {weight!r}, skipped")
    return notes


def load(path: str) -> dict[str, dict[str, Any]]:
    """The saved overrides; {} when there is no file yet. OSError/ValueError otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    return decode(text)


def save(path: str, text: str) -> None:
    """Write `text` to `path` atomically: readers see the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tuilb-state-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
