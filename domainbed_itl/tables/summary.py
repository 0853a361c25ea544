"""Tables 2, 3 and 4: one cell per (dataset, algorithm), the mean over the dataset's domains.

Table 2 has a row per dataset, a column per algorithm and the Avg. Rank row; Tables 3 and 4 have
a row per algorithm and a column per dataset, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from domainbed_itl.tables import order, paper
from domainbed_itl.tables.cells import Cell
from domainbed_itl.tables.per_domain import average_cell
from domainbed_itl.tables.ranks import average_ranks, complete_blocks
from domainbed_itl.tables.render import Table
from domainbed_itl.tables.request import Request, versus_text
from domainbed_itl.tables.scores import Scores

RANK_ROW = "Avg. Rank"


def average_cells(scores: Scores, datasets: list[str],
                  algorithms: list[str]) -> dict[tuple[str, str], Cell]:
    return {
        (dataset, algorithm): average_cell(scores, dataset, algorithm)
        for dataset in datasets
        for algorithm in algorithms
    }


def printed_values(cells: dict[tuple[str, str], Cell], datasets: list[str],
                   algorithms: list[str]) -> pd.DataFrame:
    """datasets x algorithms of the printed means (NaN where a cell has no value)."""
    return pd.DataFrame(
        [[cells[(dataset, algorithm)].printed for algorithm in algorithms] for dataset in datasets],
        index=datasets, columns=algorithms, dtype=float,
    )


def _rank_row(request: Request, values: pd.DataFrame) -> tuple[list[str], str]:
    ranks = average_ranks(values)
    complete = list(complete_blocks(values).index)
    cells = []
    for algorithm in values.columns:
        text = "X" if ranks.empty else f"{ranks[algorithm]:.2f}"
        published = paper.figure(request.table, RANK_ROW, algorithm, "Avg")
        cells.append(paper.beside(text, published, request.latex) if request.compare_paper
                     else text)
    if complete:
        note = (f"{RANK_ROW}: rank 1 = best, per dataset, ties averaged, on the means as printed, "
                f"averaged over the {len(complete)} dataset(s) where every column has a value: "
                + ", ".join(complete) + ".")
    else:
        note = f"{RANK_ROW}: none, no dataset has a value in every column."
    return cells, note


def _grid(request: Request, datasets: list[str], algorithms: list[str],
          text: Callable[[str, str], str]) -> list[tuple[str, list[str]]]:
    """Rows of text(dataset, algorithm), oriented as the table's paper layout."""
    if request.table == "2":
        return [(d, [text(d, a) for a in algorithms]) for d in datasets]
    return [(a, [text(d, a) for d in datasets]) for a in algorithms]


def summary_tables(scores: Scores, request: Request) -> list[Table]:
    algorithms = order.algorithms(request.table, scores.algorithms)
    datasets = order.datasets(request.table, scores.datasets)
    cells = average_cells(scores, datasets, algorithms)
    by_dataset = request.table == "2"
    corner, labels = ("Dataset", algorithms) if by_dataset else ("Algorithm", datasets)

    def text(dataset: str, algorithm: str) -> str:
        plain = cells[(dataset, algorithm)].text(request.latex)
        return request.with_paper(plain, dataset, algorithm, "Avg")

    rows = _grid(request, datasets, algorithms, text)
    notes = request.notes(algorithms)
    if by_dataset:
        rank_cells, rank_note = _rank_row(request, printed_values(cells, datasets, algorithms))
        rows.append((RANK_ROW, rank_cells))
        notes.append(rank_note)
    tables = [Table(request.title(scores), corner, list(labels), rows, notes)]
    if request.versus is not None:
        others = [a for a in algorithms if a != request.versus]

        def difference(dataset: str, algorithm: str) -> str:
            return versus_text(cells[(dataset, algorithm)], cells[(dataset, request.versus)],
                               request.latex)

        rows = _grid(request, datasets, others, difference)
        labels = others if by_dataset else datasets
        tables.append(Table(request.versus_title(scores), corner, list(labels), rows,
                            request.versus_notes()))
    return tables
