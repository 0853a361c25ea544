"""The published figures of Tables 1-6, 9 and 10, shipped in the package as published.json.

The file quotes every figure as printed and carries its own notes (Table 10's swapped block
names, averages that do not match their domains, claims the printed figures do not support),
because users of the package do not have the paper's working notes. A note names the tables it
concerns, so that a table compared with the paper prints the notes that bear on it.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

DATA_FILE = "published.json"


@functools.cache
def published() -> dict[str, Any]:
    text = resources.files("domainbed_itl.tables").joinpath(DATA_FILE).read_text("utf-8")
    return json.loads(text)


def figure(table: str, dataset: str, algorithm: str, column: str) -> str | None:
    """The printed figure of one cell, or None where the paper has none."""
    return (
        published()["tables"].get(table, {}).get(dataset, {}).get(algorithm, {}).get(column)
    )


def row_label(table: str, algorithm: str) -> str | None:
    """The paper's own name for an algorithm's row in `table`, where it differs from ours."""
    return published()["row_labels"].get(table, {}).get(algorithm)


def notes(table: str) -> list[str]:
    """The file's notes on `table`; notes on the transcription as a whole name no table."""
    return [note["text"] for note in published()["notes"] if table in note.get("tables", ())]


def beside(text: str, published_figure: str | None, latex: bool) -> str:
    """A cell with the published figure after it, when there is one."""
    if published_figure is None:
        return text
    if latex:
        published_figure = published_figure.replace("±", "$\\pm$")
    return f"{text} (paper {published_figure})"
