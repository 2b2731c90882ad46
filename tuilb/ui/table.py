"""The backend table: one row per backend, grouped by pool, updated cell by cell.

A repaint of a whole DataTable measured 10-15 ms in this process, which is time the
proxy does not run; so rows are rebuilt only when the set of rows changes (filter,
reload), and otherwise only cells whose text changed are updated.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from tuilb.model import AdminState, BackendSnapshot, Health, Snapshot
from tuilb.stats import RateTracker, human_bytes
from tuilb.ui.text import clean, safe

# (key, label, width); None = as wide as the config's longest value (set at mount).
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("backend", "Backend", None),
    ("address", "Address", None),
    ("state", "State", 8),
    ("health", "Health", 7),
    ("weight", "Weight", 11),
    ("active", "Active", 7),
    ("total", "Total", 9),
    ("rate", "Conn/s", 7),
    ("failed", "Failed", 7),
    ("in", "In", 7),
    ("out", "Out", 7),
    ("drain", "Drain", 13),
)

STATE_STYLE = {
    AdminState.READY: "bold green",
    AdminState.DRAINING: "bold yellow",
    AdminState.DISABLED: "bold red",
}
HEALTH_STYLE = {Health.UNKNOWN: "dim", Health.UP: "bold green", Health.DOWN: "bold red reverse"}

Cells = tuple[tuple[str, str], ...]  # (text, style) per column: cheap to compare


def drain_text(b: BackendSnapshot, started_with: int) -> tuple[str, str]:
    """Progress of a drain toward zero connections, e.g. '3 left 70%' or 'done'."""
    if b.state is not AdminState.DRAINING:
        return ("", "")
    if b.active_connections == 0:
        return ("done", "bold green")
    start = max(started_with, b.active_connections)
    done = 100 * (start - b.active_connections) // start
    return (f"{b.active_connections} left {done}%", "yellow")


def row_cells(b: BackendSnapshot, tracker: RateTracker, drain_start: int) -> Cells:
    target = f"{b.pool}/{b.name}"
    rates = tracker.rates.get(target)
    weight = str(b.weight)
    if b.effective_weight != b.weight:
        weight = f"{b.weight} (eff {b.effective_weight})"
    return (
        (clean(target), "bold"),
        (clean(b.address), ""),
        (str(b.state), STATE_STYLE[b.state]),
        (str(b.health), HEALTH_STYLE[b.health]),
        (weight, "" if b.weight else "bold yellow"),
        (str(b.active_connections), ""),
        (str(b.total_connections), ""),
        (f"{rates.connections:.1f}" if rates else "-", ""),
        (str(b.failed_connects), "bold red" if b.failed_connects else "dim"),
        (human_bytes(b.bytes_in), ""),
        (human_bytes(b.bytes_out), ""),
        drain_text(b, drain_start),
    )


def matches(cells: Cells, needle: str) -> bool:
    return not needle or any(needle.lower() in text.lower() for text, _ in cells[:4])


class BackendTable(DataTable[Text]):
    def __init__(self, widths: dict[str, int] | None = None) -> None:
        super().__init__(id="backends", cursor_type="row", zebra_stripes=True)
        self._shown: dict[str, Cells] = {}
        self._order: list[str] = []
        self._widths = widths or {}

    def on_mount(self) -> None:
        # Fixed widths: cells are updated in place, and a cell that outgrows its column
        # would otherwise be cut ("1." for "1.5K").
        for key, label, width in COLUMNS:
            width = width or max(len(label), self._widths.get(key, 16))
            self.add_column(label, key=key, width=width)

    @property
    def selected(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def show(
        self,
        snapshot: Snapshot,
        tracker: RateTracker,
        drain_start: dict[str, int],
        needle: str = "",
    ) -> None:
        rows: dict[str, Cells] = {}
        for pool in snapshot.pools:
            for b in pool.backends:
                target = f"{pool.name}/{b.name}"
                cells = row_cells(b, tracker, drain_start.get(target, 0))
                if matches(cells, needle):
                    rows[target] = cells
        order = list(rows)
        if order != self._order:
            self._rebuild(rows)
            return
        for target, cells in rows.items():
            old = self._shown[target]
            if cells == old:
                continue
            for (key, _, _), new, was in zip(COLUMNS, cells, old, strict=True):
                if new != was:
                    self.update_cell(target, key, safe(new[0], new[1]))
            self._shown[target] = cells

    def _rebuild(self, rows: dict[str, Cells]) -> None:
        selected = self.selected
        self.clear()
        for target, cells in rows.items():
            self.add_row(*(safe(text, style) for text, style in cells), key=target)
        self._shown = dict(rows)
        self._order = list(rows)
        if selected in rows:
            self.move_cursor(row=self._order.index(selected))
        elif self._order:
            self.move_cursor(row=0)
