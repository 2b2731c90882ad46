"""The backend table: one row per backend, grouped by pool, repainted row by row.

In one process every repaint is time the proxy does not run. A DataTable re-rendered
every cell of the table through Rich on any cell update (~10 ms a refresh for 3 rows),
so this is a Line API widget instead: each row is one `Strip`, built from segments
directly (no Rich rendering) and cached until its cells, its place (zebra, cursor,
hover) or the theme change; an update repaints only the rows whose text changed.

It looks and behaves like the DataTable it replaced (`cursor_type="row"`,
`zebra_stripes=True`, fixed column widths, header row fixed while scrolling): the styles
come from the same component classes, and the segments are cut the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size, Spacing
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tuilb.model import AdminState, BackendSnapshot, Health, Snapshot
from tuilb.stats import RateTracker, human_bytes
from tuilb.ui.text import clean, safe

# (key, label, width); None = as wide as the config's longest value (set at mount).
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("backend", "Backend", None),
    ("address", "Address", None),
    ("state", "State", 8),
    ("health", "Health", 11),
    ("weight", "Weight", 11),
    ("active", "Active", 7),
    ("total", "Total", 9),
    ("rate", "Conn/s", 7),
    ("requests", "Req/s", 7),
    ("p99", "p99 ms", 7),
    ("failed", "Failed", 7),
    ("in", "In", 7),
    ("out", "Out", 7),
    ("drain", "Drain", 13),
)
KEYS = tuple(key for key, _, _ in COLUMNS)
HTTP_ONLY = ("requests", "p99")  # shown when the config has an http listener
PADDING = 1  # blank cells on each side of a cell's text

STATE_STYLE = {
    AdminState.READY: "bold green",
    AdminState.DRAINING: "bold yellow",
    AdminState.DISABLED: "bold red",
}
HEALTH_STYLE = {Health.UNKNOWN: "dim", Health.UP: "bold green", Health.DOWN: "bold red reverse"}
EJECTED_STYLE = "bold magenta reverse"

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


def health_cell(b: BackendSnapshot) -> tuple[str, str]:
    """'up 3/3' (3 failed checks from down), 'down 1/2' (1 of 2 good checks to up),
    'ejected 25s' while passive health has it out; spelled out, coloured as well."""
    if b.ejected:
        return (f"ejected {b.eject_left:.0f}s", EJECTED_STYLE)
    return (f"{b.health} {b.health_progress}".rstrip(), HEALTH_STYLE[b.health])


def row_cells(b: BackendSnapshot, tracker: RateTracker, drain_start: int) -> Cells:
    target = f"{b.pool}/{b.name}"
    rates = tracker.rates.get(target)
    weight = str(b.weight)
    if b.slow_start < 1.0:  # ramping up after coming back
        weight = f"{b.weight} (eff {b.effective_weight:.1f})"
    elif b.weight != b.config_weight:  # an operator changed it: show what the config says
        weight = f"{b.weight} (cfg {b.config_weight})"
    return (
        (clean(target), "bold"),
        (clean(b.address), ""),
        (str(b.state), STATE_STYLE[b.state]),
        health_cell(b),
        (weight, "" if b.weight else "bold yellow"),
        (str(b.active_connections), ""),
        (str(b.total_connections), ""),
        (f"{rates.connections:.1f}" if rates else "-", ""),
        (f"{rates.requests:.1f}" if rates and b.requests else "-", ""),
        (f"{b.latency[2] * 1000:.1f}" if b.latency else "-", ""),
        (str(b.failed_connects), "bold red" if b.failed_connects else "dim"),
        (human_bytes(b.bytes_in), ""),
        (human_bytes(b.bytes_out), ""),
        drain_text(b, drain_start),
    )


def matches(cells: Cells, needle: str) -> bool:
    return not needle or any(needle.lower() in text.lower() for text, _ in cells[:4])


_NULL = Style.null()


def _cell_segments(
    text: str, text_style: Style, width: int, pre: Style, post: Style
) -> list[Segment]:
    """One cell as the DataTable cut it: pad, text, fill + pad (text cropped to width)."""
    if cell_len(text) > width:
        text = set_cell_size(text, width)
    fill = width - cell_len(text)
    pad = " " * PADDING
    segments = [Segment(pad, pre + post)]
    if text:
        segments.append(Segment(text, pre + text_style + post))
    segments.append(Segment(" " * fill + pad, pre + post))
    return segments


class BackendTable(ScrollView, can_focus=True):
    """Rows of backends with a row cursor; the text of every cell is shown literally."""

    DEFAULT_CSS = """
    BackendTable {
        background: $surface;
        color: $foreground;
        height: auto;
        max-height: 100%;

        &:focus {
            background-tint: $foreground 5%;
            & > .backends--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .backends--header {
                background-tint: $foreground 5%;
            }
        }
        &:dark {
            & > .backends--even-row {
                background: $surface-darken-1 40%;
            }
        }
        & > .backends--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        &:ansi > .backends--header {
            background: ansi_bright_blue;
            color: ansi_default;
        }
        & > .backends--odd-row {
        }
        & > .backends--even-row {
            background: $surface-lighten-1 50%;
        }
        & > .backends--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        & > .backends--hover {
            background: $block-hover-background;
        }
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "backends--header",
        "backends--cursor",
        "backends--hover",
        "backends--odd-row",
        "backends--even-row",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select", "Select", show=False),
        Binding("up", "cursor_up", "Cursor up", show=False),
        Binding("down", "cursor_down", "Cursor down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,ctrl+home", "first", "First row", show=False),
        Binding("end,ctrl+end", "last", "Last row", show=False),
    ]

    class RowHighlighted(Message):
        """The cursor moved to another row (or the rows changed under it)."""

        def __init__(self, target: str | None) -> None:
            super().__init__()
            self.target = target

    class RowSelected(Message):
        """The row under the cursor was chosen (Enter, or a click on it)."""

        def __init__(self, target: str) -> None:
            super().__init__()
            self.target = target

    def __init__(
        self, widths: dict[str, int] | None = None, columns: tuple[str, ...] = KEYS
    ) -> None:
        super().__init__(id="backends")
        # The columns shown, as indices into `row_cells`' full row (narrower without HTTP).
        self._keep = tuple(KEYS.index(key) for key in columns)
        self._columns = tuple(COLUMNS[i] for i in self._keep)
        self._column_keys = tuple(key for key, _, _ in self._columns)
        self._shown: dict[str, Cells] = {}
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        given = widths or {}
        # Fixed widths: a cell that outgrew its column would otherwise be cut ("1." for
        # "1.5K"); names and addresses are as wide as the config's longest.
        self._widths = tuple(
            width or max(len(label), given.get(key, 16)) for key, label, width in self._columns
        )
        self._table_width = sum(w + 2 * PADDING for w in self._widths)
        self._x = [sum(w + 2 * PADDING for w in self._widths[:i]) for i in range(len(self._keep))]
        self.cursor_row = 0
        self._hover: int | None = None  # the row under the mouse
        # Row index (-1: the header) -> (what it was built from, the strip). The key holds
        # the styles too, so a theme or focus change rebuilds the rows.
        self._strips: dict[int, tuple[tuple[Any, ...], Strip]] = {}
        self.virtual_size = Size(self._table_width, 1)

    # -- data ----------------------------------------------------------------------------
    @property
    def selected(self) -> str | None:
        if 0 <= self.cursor_row < len(self._order):
            return self._order[self.cursor_row]
        return None

    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def order(self) -> list[str]:
        """The targets of the rows, top to bottom."""
        return list(self._order)

    def get_cell(self, target: str, column: str) -> Text:
        """A cell as shown (its text and style)."""
        text, style = self._shown[target][self._column_keys.index(column)]
        return safe(text, style)

    def show(
        self,
        snapshot: Snapshot,
        tracker: RateTracker,
        drain_start: dict[str, int],
        needle: str = "",
    ) -> None:
        rows: dict[str, Cells] = {}
        keep = self._keep
        whole = len(keep) == len(KEYS)
        for pool in snapshot.pools:
            for b in pool.backends:
                target = f"{pool.name}/{b.name}"
                cells = row_cells(b, tracker, drain_start.get(target, 0))
                if matches(cells, needle):
                    rows[target] = cells if whole else tuple(cells[i] for i in keep)
        order = list(rows)
        if order != self._order:
            self._rebuild(rows)
            return
        shown = self._shown
        for target, cells in rows.items():
            old = shown[target]
            if cells != old:
                shown[target] = cells
                self._refresh_cells(self._index[target], cells, old)

    def _refresh_cells(self, row: int, cells: Cells, old: Cells) -> None:
        """Repaint the cells of `row` whose text changed: the row's strip is rebuilt, but
        only those cells go to the terminal."""
        scroll_x, scroll_y = self.scroll_offset
        y = 1 + row - scroll_y
        if y < 1:
            return  # scrolled out of view (its strip is rebuilt when it comes back)
        for column, (new, was) in enumerate(zip(cells, old, strict=True)):
            if new != was:
                width = self._widths[column] + 2 * PADDING
                self.refresh(Region(self._x[column] - scroll_x, y, width, 1))

    def _rebuild(self, rows: dict[str, Cells]) -> None:
        selected = self.selected
        self._shown = dict(rows)
        self._order = list(rows)
        self._index = {target: i for i, target in enumerate(self._order)}
        self._strips.clear()
        self._hover = None
        self.virtual_size = Size(self._table_width, 1 + len(self._order))
        self.refresh(layout=True)  # the height follows the rows
        if selected in self._index:
            self.move_cursor(row=self._index[selected])
        else:
            self.move_cursor(row=0)
        self.post_message(self.RowHighlighted(self.selected))

    # -- the cursor ----------------------------------------------------------------------
    def move_cursor(self, *, row: int, animate: bool = False) -> None:
        row = max(0, min(row, len(self._order) - 1))
        old, self.cursor_row = self.cursor_row, row
        if old != row:
            self.refresh_line(1 + old)
            self.refresh_line(1 + row)
            self.post_message(self.RowHighlighted(self.selected))
        if self._order:
            # Keep the cursor's row in view below the header (fixed on line 0).
            self.scroll_to_region(
                Region(int(self.scroll_x), 1 + row, 1, 1),
                spacing=Spacing(1, 0, 0, 0),
                animate=animate,
                force=True,
                immediate=True,
            )

    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _keys(self, row: int) -> None:
        self._set_hover(None)  # the keyboard hides the mouse's hover row
        self.move_cursor(row=row)

    def action_cursor_up(self) -> None:
        self._keys(self.cursor_row - 1)

    def action_cursor_down(self) -> None:
        self._keys(self.cursor_row + 1)

    def action_page_up(self) -> None:
        self._keys(self.cursor_row - self._page())

    def action_page_down(self) -> None:
        self._keys(self.cursor_row + self._page())

    def action_select(self) -> None:
        if (target := self.selected) is not None:
            self.post_message(self.RowSelected(target))

    def action_first(self) -> None:
        self._keys(0)

    def action_last(self) -> None:
        self._keys(len(self._order) - 1)

    # -- the mouse -----------------------------------------------------------------------
    def _set_hover(self, row: int | None) -> None:
        if row != self._hover:
            for y in (self._hover, row):
                if y is not None:
                    self.refresh_line(1 + y)
            self._hover = row

    def on_mouse_move(self, event: events.MouseMove) -> None:
        row = event.style.meta.get("row")
        self._set_hover(row if isinstance(row, int) and row >= 0 else None)

    def on_leave(self, event: events.Leave) -> None:
        self._set_hover(None)

    def on_click(self, event: events.Click) -> None:
        row = event.style.meta.get("row")
        if not isinstance(row, int) or not 0 <= row < len(self._order):
            return
        event.stop()
        if row == self.cursor_row:  # a click on the cursor's row selects it
            self.post_message(self.RowSelected(self._order[row]))
        else:
            self.move_cursor(row=row)

    # -- rendering -----------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        if y == 0:
            strip = self._row_strip(-1, base, width)
        else:
            row = y - 1 + scroll_y
            if not 0 <= row < len(self._order):
                return Strip.blank(width, base)
            strip = self._row_strip(row, base, width)
        return strip.crop(scroll_x, scroll_x + width) if strip.cell_length > width else strip

    def _row_strip(self, row: int, base: Style, width: int) -> Strip:
        """Row `row` (-1: the header) at the full table width (or the widget's, if wider)."""
        component = self.get_component_rich_style
        header = row < 0
        cursor = not header and row == self.cursor_row
        hover = not header and row == self._hover
        if header:
            row_style = component("backends--header")
            cells: Cells = tuple((label, "") for _, label, _ in self._columns)
        else:
            row_style = component("backends--odd-row" if row % 2 else "backends--even-row")
            cells = self._shown[self._order[row]]
        highlight = _NULL
        if hover:
            highlight += component("backends--hover")
        if cursor:
            highlight += component("backends--cursor")
        full = max(width, self._table_width)
        key = (cells, row_style, highlight, base, full)
        cached = self._strips.get(row)
        if cached is not None and cached[0] == key:
            return cached[1]
        # The cursor's colours win over the cells' own (DataTable's "css" priority).
        post = (
            Style.from_color(highlight.color) + Style.from_color(bgcolor=highlight.bgcolor)
            if highlight
            else _NULL
        )
        segments: list[Segment] = []
        for column, ((text, style), cell_width) in enumerate(zip(cells, self._widths, strict=True)):
            pre = row_style + Style.from_meta({"row": row, "column": column}) + highlight
            segments += _cell_segments(text, Style.parse(style), cell_width, pre, post)
        rest = full - self._table_width
        extend = row_style + highlight
        extend += Style.from_meta({"row": row, "column": 0, "out_of_bounds": True})
        segments.append(Segment(" " * rest, extend))
        strip = Strip(segments, full).simplify()
        self._strips[row] = (key, strip)
        return strip
