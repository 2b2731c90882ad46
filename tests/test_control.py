"""Table tests for operator commands (tuilb.control): build(), apply(), the registry."""

from __future__ import annotations

import dataclasses

import pytest

from tuilb import control
from tuilb.config import Address, BackendConfig, PoolConfig, parse
from tuilb.control import (
    REGISTRY,
    Command,
    Disable,
    Drain,
    Enable,
    SetWeight,
    apply,
    build,
    parse_weight,
)
from tuilb.errors import CommandError, TuilbError
from tuilb.model import AdminState, Model


def make_model(weight: int = 5) -> Model:
    return Model(
        [
            PoolConfig(
                "app",
                "round_robin",
                (
                    BackendConfig("a", Address("127.0.0.1", 9001), weight),
                    BackendConfig("b", Address("127.0.0.1", 9002), 1),
                ),
            ),
            PoolConfig("api", "round_robin", (BackendConfig("x", Address("10.0.0.1", 80)),)),
        ],
        clock=lambda: 0.0,
    )


# ---------------------------------------------------------------------------------------
# build()


@pytest.mark.parametrize(
    ("name", "args", "command"),
    [
        ("drain", ["app/a"], Drain("app/a")),
        ("enable", ["app/a"], Enable("app/a")),
        ("disable", ["api/x"], Disable("api/x")),
        ("weight", ["app/a", "10"], SetWeight("app/a", 10, False)),
        ("weight", ["app/a", "0"], SetWeight("app/a", 0, False)),
        ("weight", ["app/a", "256"], SetWeight("app/a", 256, False)),
        ("weight", ["app/a", "+10"], SetWeight("app/a", 10, True)),
        ("weight", ["app/a", "-10"], SetWeight("app/a", -10, True)),
        ("weight", ["app/a", "-1"], SetWeight("app/a", -1, True)),
        ("weight", ["app/a", "+0"], SetWeight("app/a", 0, True)),
        ("weight", ["app/a", "+300"], SetWeight("app/a", 300, True)),  # clamped when applied
        ("weight", ["app/a", " 7 "], SetWeight("app/a", 7, False)),
        # build does not look targets up; apply does
        ("drain", ["nope/zz"], Drain("nope/zz")),
    ],
)
def test_build(name: str, args: list[str], command: Command) -> None:
    assert build(name, args) == command


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("weight", ["app/a", "abc"], "bad weight 'abc': give 0..256, or +N / -N to change it"),
        ("weight", ["app/a", ""], "bad weight ''"),
        ("weight", ["app/a", "+"], "bad weight '+'"),
        ("weight", ["app/a", "1.5"], "bad weight '1.5'"),
        ("weight", ["app/a", "ten"], "bad weight 'ten'"),
        ("weight", ["app/a", "300"], "weight 300 is out of range 0..256"),
        ("weight", ["app/a", "257"], "weight 257 is out of range 0..256"),
        ("weight", ["app/a"], "expected two arguments: POOL/BACKEND WEIGHT"),
        ("weight", [], "expected two arguments"),
        ("weight", ["app/a", "1", "2"], "expected two arguments"),
        ("drain", [], "expected one argument: POOL/BACKEND"),
        ("drain", ["app/a", "app/b"], "expected one argument"),
        ("enable", [], "expected one argument"),
        ("disable", ["a", "b", "c"], "expected one argument"),
        (
            "restart",
            ["app/a"],
            "unknown command 'restart'; commands: drain, enable, disable, weight",
        ),
        ("", [], "unknown command ''"),
        ("Drain", ["app/a"], "unknown command 'Drain'"),
    ],
)
def test_build_errors(name: str, args: list[str], message: str) -> None:
    with pytest.raises(CommandError) as info:
        build(name, args)
    assert message in str(info.value)
    assert isinstance(info.value, TuilbError)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("5", (5, False)), ("+10", (10, True)), ("-3", (-3, True)), ("0", (0, False))],
)
def test_parse_weight(text: str, parsed: tuple[int, bool]) -> None:
    assert parse_weight(text) == parsed


def test_commands_are_frozen() -> None:
    for command in (Drain("app/a"), Enable("app/a"), Disable("app/a"), SetWeight("app/a", 1)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            command.target = "app/b"  # type: ignore[misc]
    assert SetWeight("app/a", 3).relative is False


# ---------------------------------------------------------------------------------------
# apply()


@pytest.mark.parametrize(
    ("setup", "command", "state", "message"),
    [
        (None, Drain("app/a"), AdminState.DRAINING, "app/a: draining"),
        (None, Disable("app/a"), AdminState.DISABLED, "app/a: disabled"),
        (None, Enable("app/a"), AdminState.READY, "app/a: already ready"),
        (AdminState.DRAINING, Enable("app/a"), AdminState.READY, "app/a: ready"),
        (AdminState.DISABLED, Enable("app/a"), AdminState.READY, "app/a: ready"),
        (AdminState.DRAINING, Drain("app/a"), AdminState.DRAINING, "app/a: already draining"),
        (AdminState.DISABLED, Drain("app/a"), AdminState.DRAINING, "app/a: draining"),
        (AdminState.DRAINING, Disable("app/a"), AdminState.DISABLED, "app/a: disabled"),
        (AdminState.DISABLED, Disable("app/a"), AdminState.DISABLED, "app/a: already disabled"),
    ],
)
def test_apply_state(
    setup: AdminState | None, command: Command, state: AdminState, message: str
) -> None:
    model = make_model()
    a = model.backend("app/a")
    if setup is not None:
        model.set_admin(a, setup, "setup")
    before = len(model.events)
    assert apply(model, command) == message
    assert a.admin is state
    assert model.backend("app/b").admin is AdminState.READY  # nothing else touched
    changed = "already" not in message
    state_events = [e for e in list(model.events)[before:] if e.kind == "state"]
    assert len(state_events) == (1 if changed else 0)


@pytest.mark.parametrize(
    ("start", "args", "weight", "message"),
    [
        (5, ["20"], 20, "app/a: weight 20"),
        (5, ["0"], 0, "app/a: weight 0"),
        (5, ["256"], 256, "app/a: weight 256"),
        (5, ["5"], 5, "app/a: weight already 5"),
        (5, ["+10"], 15, "app/a: weight 15"),
        (15, ["-10"], 5, "app/a: weight 5"),
        (5, ["-10"], 0, "app/a: weight 0"),  # clamped at 0
        (250, ["+10"], 256, "app/a: weight 256"),  # clamped at 256
        (5, ["+300"], 256, "app/a: weight 256"),
        (1, ["-1"], 0, "app/a: weight 0"),  # "-1" is relative: one less
        (3, ["-1"], 2, "app/a: weight 2"),
        (256, ["+10"], 256, "app/a: weight already 256"),
        (0, ["-10"], 0, "app/a: weight already 0"),
        (7, ["+0"], 7, "app/a: weight already 7"),
    ],
)
def test_apply_weight(start: int, args: list[str], weight: int, message: str) -> None:
    model = make_model(weight=start)
    a = model.backend("app/a")
    command = build("weight", ["app/a", *args])
    assert apply(model, command) == message
    assert a.weight == weight
    assert model.backend("app/b").weight == 1
    events = [e for e in model.events if e.kind == "weight"]
    if weight == start:
        assert events == []
    else:
        (event,) = events
        assert (event.target, event.old, event.new) == ("app/a", str(start), str(weight))


def test_weight_zero_stops_new_traffic_and_back() -> None:
    model = make_model()
    a = model.backend("app/a")
    apply(model, build("weight", ["app/a", "0"]))
    assert not a.eligible
    apply(model, build("weight", ["app/a", "+3"]))
    assert a.eligible and a.weight == 3


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (Drain("nope/a"), "no pool named 'nope'"),
        (Enable("app/zz"), "no backend named 'zz' in pool 'app'"),
        (Disable("api/a"), "no backend named 'a' in pool 'api'"),
        (SetWeight("nope/a", 3), "no pool named 'nope'"),
        (SetWeight("app/zz", 3, relative=True), "no backend named 'zz'"),
        (Drain("app"), "in pool 'app'"),
        (Drain(""), "no pool named ''"),
        (Drain("app/a/b"), "no backend named 'a/b' in pool 'app'"),
        (Drain("/a"), "no pool named ''"),
    ],
)
def test_apply_unknown_or_malformed_target(command: Command, message: str) -> None:
    model = make_model()
    with pytest.raises(CommandError) as info:
        apply(model, command)
    text = str(info.value)
    assert message in text
    assert "POOL/BACKEND" in text  # says how targets are written
    assert list(model.events) == []


@pytest.mark.parametrize("weight", [300, 257, -1, -50])
def test_apply_rejects_absolute_weight_out_of_range(weight: int) -> None:
    """Commands built directly (admin API, keys) skip parse_weight; apply must still refuse."""
    model = make_model()
    with pytest.raises(CommandError, match="out of range"):
        apply(model, SetWeight("app/a", weight))
    assert model.backend("app/a").weight == 5
    assert list(model.events) == []


@pytest.mark.parametrize(
    ("command", "cause"),
    [
        (Drain("app/a"), "ctl: drain"),
        (Disable("app/a"), "ctl: disable"),
        (SetWeight("app/a", 9), "ctl: weight"),
        (SetWeight("app/a", -2, relative=True), "ctl: weight"),
    ],
)
def test_event_cause_names_the_source(command: Command, cause: str) -> None:
    model = make_model()
    apply(model, command, source="ctl")
    event = next(e for e in model.events if e.kind in ("state", "weight"))
    assert event.cause == cause
    assert event.target == "app/a"


def test_enable_event_cause_and_default_source() -> None:
    model = make_model()
    a = model.backend("app/a")
    model.set_admin(a, AdminState.DISABLED, "setup")
    apply(model, Enable("app/a"))
    event = model.events[-1]
    assert (event.kind, event.old, event.new) == ("state", "disabled", "ready")
    assert event.cause.startswith("operator")
    assert "enable" in event.cause


def test_drain_through_apply_reports_drained() -> None:
    model = make_model()
    apply(model, Drain("app/a"), source="keys")
    assert [e.kind for e in model.events] == ["state", "drained"]
    assert model.snapshot().backend("app/a").drained is True


# ---------------------------------------------------------------------------------------
# The registry


def test_registry_names() -> None:
    assert list(REGISTRY) == ["drain", "enable", "disable", "weight", "reset"]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registry_entry_has_help_and_usage(name: str) -> None:
    spec = REGISTRY[name]
    assert spec.name == name
    assert spec.usage.startswith(name + " ")
    assert "POOL/BACKEND" in spec.usage
    assert len(spec.help.strip()) > 10
    assert spec.help.strip().endswith(".")


@pytest.mark.parametrize(
    ("name", "args", "kind", "message"),
    [
        ("drain", ["app/b"], Drain, "app/b: draining"),
        ("enable", ["app/b"], Enable, "app/b: already ready"),
        ("disable", ["app/b"], Disable, "app/b: disabled"),
        ("weight", ["app/b", "4"], SetWeight, "app/b: weight 4"),
    ],
)
def test_registry_build_round_trip(name: str, args: list[str], kind: type, message: str) -> None:
    command = REGISTRY[name].build(args)
    assert type(command) is kind
    assert command.target == "app/b"
    assert apply(make_model(), command) == message


def test_every_command_type_is_in_the_registry() -> None:
    built = {type(REGISTRY[n].build(["p/b", "1"] if n == "weight" else ["p/b"])) for n in REGISTRY}
    assert built == {Drain, Enable, Disable, SetWeight, control.Reset}
    assert control.Command == Drain | Enable | Disable | SetWeight | control.Reset


def test_reset_goes_back_to_the_configured_state_and_weight() -> None:
    model = Model(parse(TEXT_RESET, "<t>").pools.values())
    backend = model.backend("app/a")
    apply(model, control.Disable("app/a"), "keyboard")
    apply(model, SetWeight("app/a", 9), "keyboard")
    message = apply(model, control.Reset("app/a"), "admin API")
    assert message == "app/a: ready, weight 4 (as configured)"
    assert (backend.admin, backend.weight) == (AdminState.READY, 4)
    causes = [e.cause for e in model.events][-2:]
    assert causes == ["admin API: reset", "admin API: reset"]
    assert apply(model, control.Reset("app/a"), "x") == "app/a: already as configured"
    assert control.empties_pool(model.snapshot(), control.Reset("app/a")) is None


TEXT_RESET = """
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
pool = "app"
[pools.app]
algorithm = "weighted_round_robin"
[[pools.app.backends]]
name = "a"
address = "127.0.0.1:1"
weight = 4
"""
