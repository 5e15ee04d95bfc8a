"""Aligned text tables for the CLI and the demo, coloured only on a terminal; cells for XP and levels.

Colour is used when the stream is a TTY and ``NO_COLOR`` is unset or empty
(https://no-color.org); box-drawing characters and arrows fall back to ASCII
when the stream's encoding cannot write them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Literal

import click

from pyxp.results import AuditFinding, Change


@dataclass(frozen=True)
class Styled:
    """A cell (or any text) with a style; the style is dropped when colour is off."""

    text: str
    fg: str | None = None
    bold: bool = False
    dim: bool = False


Cell = str | int | Styled | None


@dataclass(frozen=True)
class Column:
    title: str
    align: Literal["<", ">"] = "<"  # ">" for numbers


def colour_enabled(stream: IO[str]) -> bool:
    """True on a terminal, unless NO_COLOR is set to a non-empty value."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


def _can_encode(stream: IO[str], text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def signed(value: int) -> str:
    """XP amounts as the seeds write them: +1000, -50, 0."""
    return f"+{value}" if value > 0 else str(value)


class Printer:
    """Writes lines, headings and tables to one stream (stdout by default)."""

    def __init__(self, stream: IO[str] | None = None, colour: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.colour = colour_enabled(self.stream) if colour is None else colour
        fancy = _can_encode(self.stream, "─→━")
        self.rule_char = "─" if fancy else "-"
        self.heavy_char = "━" if fancy else "="
        self.arrow = "→" if fancy else "->"

    # -- text -------------------------------------------------------------------
    def paint(self, cell: Cell) -> str:
        text = _text(cell)
        if self.colour and isinstance(cell, Styled):
            return click.style(text, fg=cell.fg, bold=cell.bold or None, dim=cell.dim or None)
        return text

    def line(self, *parts: Cell) -> None:
        self.stream.write("".join(self.paint(part) for part in parts) + "\n")

    def blank(self) -> None:
        self.stream.write("\n")

    def heading(self, title: str, subtitle: str = "") -> None:
        """A section title: ``━━ title ── subtitle``."""
        self.blank()
        parts: list[Cell] = [Styled(f"{self.heavy_char * 2} {title}", bold=True)]
        if subtitle:
            parts.append(Styled(f"  {self.rule_char * 2} {subtitle}", dim=True))
        self.line(*parts)

    def error(self, message: str) -> None:
        click.echo(self.paint(Styled("error:", fg="red", bold=True)) + " " + message, err=True)

    # -- tables -----------------------------------------------------------------
    def table(self, columns: Sequence[Column], rows: Iterable[Sequence[Cell]], *,
              indent: int = 2, title: str | None = None) -> None:
        """Columns padded to their widest cell, a rule under the header; numbers right-aligned."""
        rows = [list(row) for row in rows]
        widths = [len(column.title) for column in columns]
        for row in rows:
            for index, cell in enumerate(row):
                widths[index] = max(widths[index], len(_text(cell)))
        margin = " " * indent
        if title:
            self.line(margin, Styled(title, bold=True))
        self._row(margin, [Styled(c.title, bold=True) for c in columns], columns, widths)
        self._row(margin, [Styled(self.rule_char * w, dim=True) for w in widths], columns, widths)
        for row in rows:
            self._row(margin, row, columns, widths)

    def _row(self, margin: str, cells: Sequence[Cell], columns: Sequence[Column], widths: list[int]) -> None:
        padded = [_padded(cell, w, c.align) for cell, c, w in zip(cells, columns, widths)]
        while padded and not _text(padded[-1]).strip():  # no trailing blanks, coloured or not
            padded.pop()
        if padded:
            padded[-1] = _stripped(padded[-1])
        line = margin + "  ".join(self.paint(cell) for cell in padded) if padded else ""
        self.stream.write(line + "\n")


def _text(cell: Cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, Styled):
        return cell.text
    return str(cell)


def _pad(text: str, width: int, align: str) -> str:
    return text.rjust(width) if align == ">" else text.ljust(width)


def _padded(cell: Cell, width: int, align: str) -> Cell:
    """The cell padded to width, keeping its style (padding outside the colour is invisible)."""
    if isinstance(cell, Styled):
        return Styled(_pad(cell.text, width, align), cell.fg, cell.bold, cell.dim)
    return _pad(_text(cell), width, align)


def _stripped(cell: Cell) -> Cell:
    if isinstance(cell, Styled):
        return Styled(cell.text.rstrip(), cell.fg, cell.bold, cell.dim)
    return _text(cell).rstrip()


def xp_cell(value: int, requested: int | None = None) -> Styled:
    """A signed XP amount: green when earned, red when lost; ``+40 (requested +100)`` when a
    balance floor or a cap cut what the rule asked for (``xp_requested``, SPEC 12)."""
    text = signed(value)
    if requested is not None and requested != value:
        text += f" (requested {signed(requested)})"
    return Styled(text, fg="green" if value > 0 else "red" if value < 0 else None)


def level_change(out: Printer, before: int, after: int) -> Cell:
    """``6``, or ``1 → 6`` (yellow when up, red when down)."""
    if before == after:
        return str(after)
    return Styled(f"{before} {out.arrow} {after}", fg="yellow" if after > before else "red")


def print_audit(out: Printer, findings: Sequence[AuditFinding]) -> None:
    """``audit: clean``, or the findings of ``pyxp.audit()`` as a table."""
    if not findings:
        out.line(Styled("audit: clean", fg="green", bold=True),
                 " (every balance equals the sum of its ledger rows; levels match the curve)")
        return
    count = f"{len(findings)} inconsistenc{'y' if len(findings) == 1 else 'ies'}"
    out.line(Styled(f"audit: {count}", fg="red", bold=True))
    out.table([Column("check"), Column("wallet"), Column("transaction", ">"), Column("detail")],
              [[f.check_name, f.user_wallet or "", f.transaction_id or "", f.detail] for f in findings])


def change_line(out: Printer, change: Change) -> list[Cell]:
    """One change of the feed on one line: cursor, time, wallet, XP, action, total, level (level-ups stand out)."""
    parts: list[Cell] = [
        Styled(f"#{change.cursor}", dim=True), f"  {change.created_at:%Y-%m-%d %H:%M:%S}  ",
        Styled(change.user_wallet, bold=True), "  ", xp_cell(change.xp_amount), " XP  ",
        change.transaction_type, f"  total {change.total_xp}  level ",
        level_change(out, change.previous_level, change.current_level),
    ]
    if change.leveled_up:
        parts.append(Styled("  LEVEL UP!", fg="yellow", bold=True))
    elif change.leveled_down:
        parts.append(Styled("  level down", fg="red"))
    return parts
