"""Tables 1, 9 and 10: one table per dataset, a row per algorithm, a column per domain and Avg.

Multi-source (1, 9) a column is a test domain. Single-source (10) a column is a source domain
and its cell lists the accuracy on each target, in environment order, then their mean.
"""

from __future__ import annotations

from domainbed_itl.tables import order
from domainbed_itl.tables.cells import Cell, number
from domainbed_itl.tables.render import Table
from domainbed_itl.tables.request import Request, versus_text
from domainbed_itl.tables.scores import DomainGroup, Scores


def domain_cell(scores: Scores, dataset: str, algorithm: str, group: DomainGroup) -> Cell:
    return Cell(
        scores.per_trial(dataset, algorithm, group.keys),
        scores.grid.missing(dataset, algorithm, group.relevant),
    )


def average_cell(scores: Scores, dataset: str, algorithm: str) -> Cell:
    """The mean over every domain of the dataset: Table 2's and Table 4's cell."""
    return Cell(
        scores.per_trial(dataset, algorithm, scores.all_keys(dataset)),
        scores.grid.missing(dataset, algorithm),
    )


def _column_label(scores: Scores, dataset: str, group: DomainGroup) -> str:
    if not scores.single_source:
        return group.label
    names = scores.env_names[dataset]
    return f"{group.label}: " + "/".join(names[target] for _, target in group.keys)


def _domain_text(scores: Scores, dataset: str, algorithm: str, group: DomainGroup,
                 latex: bool) -> str:
    cell = domain_cell(scores, dataset, algorithm, group)
    if not scores.single_source:
        return cell.text(latex)
    targets = "/".join(
        number(Cell(scores.per_trial(dataset, algorithm, [key])).printed) for key in group.keys
    )
    mean = Cell(cell.per_trial).text(latex)
    return f"{targets} ({mean}){cell.missing_suffix()}"


def _dataset_tables(scores: Scores, request: Request, dataset: str,
                    algorithms: list[str]) -> list[Table]:
    groups = scores.domain_groups(dataset)
    labels = [_column_label(scores, dataset, group) for group in groups] + ["Avg"]
    rows = []
    for algorithm in algorithms:
        cells = [
            request.with_paper(
                _domain_text(scores, dataset, algorithm, group, request.latex),
                dataset, algorithm, group.label,
            )
            for group in groups
        ]
        average = average_cell(scores, dataset, algorithm).text(request.latex)
        cells.append(request.with_paper(average, dataset, algorithm, "Avg"))
        rows.append((algorithm, cells))
    notes = request.notes(algorithms)
    if scores.single_source:
        notes.append(
            "Column 'S: T1/T2/...': trained on source S; accuracy on each target T in that "
            "order, then (their mean +/- standard error); Avg: mean over sources of that mean."
        )
    tables = [Table(request.title(scores, dataset), "Algorithm", labels, rows, notes)]
    if request.versus is not None:
        tables.append(_versus_table(scores, request, dataset, algorithms, labels))
    return tables


def _versus_table(scores: Scores, request: Request, dataset: str, algorithms: list[str],
                  labels: list[str]) -> Table:
    base = request.versus
    groups = scores.domain_groups(dataset)
    rows = []
    for algorithm in algorithms:
        if algorithm == base:
            continue
        cells = [
            versus_text(
                domain_cell(scores, dataset, algorithm, group),
                domain_cell(scores, dataset, base, group),
                request.latex,
            )
            for group in groups
        ]
        cells.append(
            versus_text(
                average_cell(scores, dataset, algorithm),
                average_cell(scores, dataset, base),
                request.latex,
            )
        )
        rows.append((algorithm, cells))
    return Table(request.versus_title(scores, dataset), "Algorithm", labels, rows,
                 request.versus_notes())


def per_domain_tables(scores: Scores, request: Request) -> list[Table]:
    algorithms = order.algorithms(request.table, scores.algorithms)
    tables = []
    for dataset in order.datasets(request.table, scores.datasets):
        tables += _dataset_tables(scores, request, dataset, algorithms)
    return tables
