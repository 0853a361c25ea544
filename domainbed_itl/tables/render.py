"""A table of the paper as text, Markdown or LaTeX, through DomainBed's `render_table`.

Titles and notes go where each format keeps prose: a header line in text and Markdown (as
DomainBed's tables), LaTeX comments around a tabular that can be pasted into a paper (each on
one line, whatever names they quote, so that no part of them leaves the comment).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domainbed.lib.latex import one_line
from domainbed.lib.results_tables import render_table


@dataclass
class Table:
    title: str
    corner: str
    col_labels: list[str]
    rows: list[tuple[str, list[str]]]
    notes: list[str] = field(default_factory=list)


def _width(table: Table) -> int:
    texts = [table.corner, *table.col_labels]
    for label, cells in table.rows:
        texts += [label, *cells]
    return max(len(text) for text in texts)


def _note_lines(notes: list[str], fmt: str) -> list[str]:
    if not notes:
        return []
    if fmt == "latex":
        return [f"% {one_line(note)}" for note in notes]
    if fmt == "markdown":
        return ["", *(f"- {note}" for note in notes)]
    return ["", *notes]


def render(tables: list[Table], fmt: str) -> str:
    lines: list[str] = []
    for table in tables:
        body = render_table(
            [cells for _, cells in table.rows],
            table.title,
            [label for label, _ in table.rows],
            [table.corner, *table.col_labels],
            _width(table),
            fmt,
        )
        if fmt == "latex":
            body = [body[0], f"% {one_line(table.title)}", *body[1:]]
        lines += body + _note_lines(table.notes, fmt)
    return "\n".join(lines).lstrip("\n") + "\n"
