"""Operator commands as data, one registry, one `apply`.

Keys, the command palette, the admin API, `tuilb ctl` and tests all build these frozen
objects (directly or through `build(name, args)`) and hand them to `apply`. Help text
lives here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuilb.config import MAX_WEIGHT
from tuilb.errors import CommandError
from tuilb.model import AdminState, Backend, Model, Snapshot


@dataclass(frozen=True, slots=True)
class Drain:
    target: str


@dataclass(frozen=True, slots=True)
class Enable:
    target: str


@dataclass(frozen=True, slots=True)
class Disable:
    target: str


@dataclass(frozen=True, slots=True)
class SetWeight:
    target: str
    weight: int
    relative: bool = False  # weight is a delta, e.g. +10 / -10


@dataclass(frozen=True, slots=True)
class Reset:
    """Back to the configured state (ready) and weight."""

    target: str


Command = Drain | Enable | Disable | SetWeight | Reset


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    usage: str
    help: str
    build: Callable[[Sequence[str]], Command]


def parse_weight(text: str) -> tuple[int, bool]:
    """ "5" -> (5, False); "+10" -> (10, True); "-3" -> (-3, True)."""
    text = text.strip()
    relative = text[:1] in ("+", "-")
    try:
        value = int(text)
    except ValueError:
        raise CommandError(
            f"bad weight {text!r}: give 0..{MAX_WEIGHT}, or +N / -N to change it"
        ) from None
    if not relative and not 0 <= value <= MAX_WEIGHT:
        raise CommandError(f"weight {value} is out of range 0..{MAX_WEIGHT}")
    return value, relative


def _one_target(
    cls: type[Drain | Enable | Disable | Reset],
) -> Callable[[Sequence[str]], Command]:
    def build(args: Sequence[str]) -> Command:
        if len(args) != 1:
            raise CommandError("expected one argument: POOL/BACKEND")
        return cls(args[0])

    return build


def _set_weight(args: Sequence[str]) -> Command:
    if len(args) != 2:
        raise CommandError("expected two arguments: POOL/BACKEND WEIGHT")
    value, relative = parse_weight(args[1])
    return SetWeight(args[0], value, relative)


REGISTRY: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec(
            "drain",
            "drain POOL/BACKEND",
            "Stop sending new connections; existing ones run to completion.",
            _one_target(Drain),
        ),
        CommandSpec(
            "enable",
            "enable POOL/BACKEND",
            "Make the backend ready for new connections again.",
            _one_target(Enable),
        ),
        CommandSpec(
            "disable",
            "disable POOL/BACKEND",
            "Take the backend out: no new connections (existing ones are not cut).",
            _one_target(Disable),
        ),
        CommandSpec(
            "weight",
            "weight POOL/BACKEND N|+N|-N",
            f"Set the weight (0..{MAX_WEIGHT}; 0 = no new traffic) or change it by N.",
            _set_weight,
        ),
        CommandSpec(
            "reset",
            "reset POOL/BACKEND",
            "Back to the configuration: ready, with the configured weight.",
            _one_target(Reset),
        ),
    )
}


def build(name: str, args: Sequence[str]) -> Command:
    spec = REGISTRY.get(name)
    if spec is None:
        raise CommandError(f"unknown command {name!r}; commands: {', '.join(REGISTRY)}")
    return spec.build(args)


def _lookup(model: Model, target: str) -> Backend:
    try:
        return model.backend(target)
    except KeyError as exc:
        raise CommandError(f"{exc.args[0]} (targets are written POOL/BACKEND)") from None


_STATES = {Drain: AdminState.DRAINING, Enable: AdminState.READY, Disable: AdminState.DISABLED}


def apply(model: Model, command: Command, source: str = "operator") -> str:
    """Apply `command` to `model`; returns what happened, for the operator to read."""
    backend = _lookup(model, command.target)
    cause = f"{source}: {type(command).__name__.lower()}"
    if isinstance(command, SetWeight):
        if command.relative:
            # +/- from a key or ctl: stop at the bounds rather than fail.
            weight = max(0, min(MAX_WEIGHT, backend.weight + command.weight))
        elif not 0 <= command.weight <= MAX_WEIGHT:
            raise CommandError(f"weight {command.weight} is out of range 0..{MAX_WEIGHT}")
        else:
            weight = command.weight
        if not model.set_weight(backend, weight, f"{source}: weight"):
            return f"{backend.target}: weight already {weight}"
        return f"{backend.target}: weight {weight}"
    if isinstance(command, Reset):
        changed = model.set_admin(backend, AdminState.READY, cause)
        changed = model.set_weight(backend, backend.config.weight, cause) or changed
        if not changed:
            return f"{backend.target}: already as configured"
        return f"{backend.target}: ready, weight {backend.weight} (as configured)"
    state = _STATES[type(command)]
    if not model.set_admin(backend, state, cause):
        return f"{backend.target}: already {state}"
    return f"{backend.target}: {state}"


def empties_pool(snapshot: Snapshot, command: Command) -> str | None:
    """If `command` would leave its pool with no eligible backend, the pool's name.

    The dashboard asks for an explicit confirmation then: traffic to that pool would fail.
    """
    if isinstance(command, Enable | Reset):
        return None
    pool_name, _, name = command.target.partition("/")
    for pool in snapshot.pools:
        if pool.name != pool_name:
            continue
        me = next((b for b in pool.backends if b.name == name), None)
        if me is None or not me.eligible:
            return None
        if isinstance(command, SetWeight):
            weight = me.weight + command.weight if command.relative else command.weight
            if weight > 0:
                return None
        if not any(b.eligible for b in pool.backends if b.name != name):
            return pool.name
    return None
