"""Tables and key/value listings: rich on a TTY, aligned plain text otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from chatcli.ui.console import UI


def show_table(ui: UI, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if ui.out_tty:
        from rich.table import Table
        from rich.text import Text

        table = Table(*headers, header_style="bold")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # cells are data, never markup
        ui.print(table)
        return
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        ui.print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def show_fields(ui: UI, fields: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        ui.print(f"{key.ljust(width)}  {value}")
