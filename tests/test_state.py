"""Persistent runtime state: operator changes survive a restart; a bad file never stops
tuilb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.conftest import RecordingLog, pair_text, start_engine
from tuilb import control, state
from tuilb.config import Config, parse
from tuilb.errors import ConfigError
from tuilb.model import AdminState, Model

TEXT = pair_text(tail='[state]\nfile = "{file}"\n')


def config(file: Path) -> Config:
    return parse(TEXT.format(file=file), "<t>")


async def run_once(
    nursery: trio.Nursery, file: Path, changes: list[control.Command]
) -> RecordingLog:
    log = RecordingLog()
    run = await start_engine(nursery, config(file), log=log)
    for command in changes:
        control.apply(run.model, command, "test")
    run.engine.request_shutdown()
    with trio.fail_after(5):
        await run.stopped.wait()
    return log


async def test_operator_changes_survive_a_restart(nursery, tmp_path):
    file = tmp_path / "tuilb.state"
    await run_once(nursery, file, [control.Drain("app/a"), control.SetWeight("app/b", 5)])
    saved = json.loads(file.read_text())
    assert saved == {
        "version": 1,
        "backends": {"app/a": {"state": "draining"}, "app/b": {"weight": 5}},
    }
    log = RecordingLog()
    run = await start_engine(nursery, config(file), log=log)
    a, b = run.model.backend("app/a"), run.model.backend("app/b")
    assert (a.admin, a.weight, b.admin, b.weight) == (AdminState.DRAINING, 3, AdminState.READY, 5)
    notes = [f["cause"] for e, _, f in log.records if e == "state_file"]
    assert notes == ["app/a: draining (restored)", "app/b: weight 5 (restored; config 1)"]
    assert [e.cause for e in run.model.events if e.kind == "weight"] == ["state file: restored"]
    # reset empties the entry again
    control.apply(run.model, control.Reset("app/b"), "test")
    assert json.loads(file.read_text())["backends"] == {"app/a": {"state": "draining"}}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not JSON"),
        ('{"version": 7, "backends": {}}', "version 1"),
        ('{"version": 1, "backends": []}', "'backends' must map"),
    ],
)
async def test_a_corrupt_state_file_is_reported_and_ignored(nursery, tmp_path, text, fragment):
    file = tmp_path / "tuilb.state"
    file.write_text(text)
    log = RecordingLog()
    run = await start_engine(nursery, config(file), log=log)
    warnings = [
        f["cause"] for e, level, f in log.records if e == "state_file" and level == "warning"
    ]
    assert len(warnings) == 1 and fragment in warnings[0]
    assert run.model.backend("app/a").admin is AdminState.READY
    control.apply(run.model, control.Disable("app/a"), "test")  # and it is rewritten whole
    assert json.loads(file.read_text())["backends"] == {"app/a": {"state": "disabled"}}


def test_restore_skips_what_no_longer_fits() -> None:
    model = Model(parse(TEXT.format(file="/tmp/x"), "<t>").pools.values())
    notes = state.restore(
        model,
        {
            "app/gone": {"state": "disabled"},
            "app/a": {"state": "sleeping", "weight": 999},
            "app/b": {"weight": True},
        },
    )
    assert notes == [
        "app/gone: not in the configuration any more, skipped",
        "app/a: unknown state 'sleeping', skipped",
        "app/a: bad weight 999, skipped",
        "app/b: bad weight True, skipped",
    ]
    assert model.events_since(0) == []


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    file = tmp_path / "s.json"
    state.save(str(file), "one\n")
    state.save(str(file), "two\n")
    assert file.read_text() == "two\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_the_state_folder_must_exist() -> None:
    with pytest.raises(ConfigError) as info:
        parse(TEXT.format(file="/no/such/folder/tuilb.state"), "<t>")
    assert "does not exist" in str(info.value.problems[0])
