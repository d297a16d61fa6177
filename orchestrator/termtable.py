"""Tables that fit the terminal they are printed on, by dropping columns rather than cutting
values: a value cut to "100/…" or a header to "atte…" says nothing. Each column has a rank;
when the table is too wide, the columns of lowest rank go first (and a column may first try
a shorter header). The choice is made at render time, against the width rich offers, so the
same table fits an 80-column terminal, a wide one, a Live view and a pipe. `wide=True`
keeps every column; print it with `wide_console` so nothing is squeezed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

KEEP = 100  # rank of the columns that are never dropped


@dataclass(frozen=True)
class Column:
    header: str
    values: Sequence[str]  # one per row; rich markup allowed
    rank: int = KEEP  # lower ranks are dropped first
    justify: str = "left"
    footer: str = ""
    short: str = ""  # header used once space is tight
    options: dict = field(default_factory=dict)  # more rich Table.add_column arguments


class FittedTable:
    """A rich renderable: the widest variant of the table that fits, then `notes` below it."""

    def __init__(self, columns: Sequence[Column], *, wide: bool = False, notes: Sequence[str] = (),
                 **table_args: Any) -> None:
        self.columns = list(columns)
        self.wide = wide
        self.notes = list(notes)
        self.table_args = table_args
        self.shown: list[str] = []  # headers of the variant last rendered

    def _table(self, columns: Sequence[Column], short: bool, fold: bool = False) -> Any:
        from rich.table import Table

        table = Table(**self.table_args)
        for c in columns:
            table.add_column(c.short if short and c.short else c.header, footer=c.footer, justify=c.justify,
                             no_wrap=not fold, overflow="fold", **c.options)
        rows = len(columns[0].values) if columns else 0
        for i in range(rows):
            table.add_row(*(c.values[i] for c in columns))
        return table

    def variants(self) -> list[tuple[list[Column], bool]]:
        """(columns, short headers) from the fullest to the barest."""
        out = [(self.columns, False)]
        if any(c.short for c in self.columns):
            out.append((self.columns, True))
        for rank in sorted({c.rank for c in self.columns if c.rank < KEEP}):
            out.append(([c for c in self.columns if c.rank > rank], True))
        return out

    def natural_width(self, console: Any) -> int:
        from rich.measure import Measurement

        table = self._table(self.columns, False)
        return Measurement.get(console, console.options.update_width(10_000), table).maximum

    def __rich_console__(self, console: Any, options: Any):
        from rich.measure import Measurement
        from rich.text import Text

        # Measured without a width limit: rich clamps a measurement to the width it is given.
        unlimited = options.update_width(10_000)
        chosen = None
        for columns, short in ([self.variants()[0]] if self.wide else self.variants()):
            table = self._table(columns, short)
            if self.wide or Measurement.get(console, unlimited, table).maximum <= options.max_width:
                chosen = (columns, table)
                break
        if chosen is None:  # even the barest is too wide: values wrap inside their cells, never cut
            columns, short = self.variants()[-1]
            chosen = (columns, self._table(columns, short, fold=True))
        self.shown = [c.header for c in chosen[0]]
        yield chosen[1]
        for note in self.notes:
            yield Text.from_markup(note, overflow="fold")


def wide_console(table: FittedTable, **console_args: Any) -> Any:
    """A Console at least as wide as `table` wants, for --wide output (a terminal narrower than
    that wraps the lines; a pager or a file keeps them whole)."""
    from rich.console import Console

    console = Console(**console_args)
    if table.wide:
        console = Console(**{**console_args, "width": max(console.width, table.natural_width(console))})
    return console
