"""DomainBed's results tables: from a sweep's records to the lines of each table.

For each model selection method, one table per dataset (a column per test domain, mean +/-
standard error over trials, and their average) and a summary table over datasets. The plain
text form is the public DomainBed's, character for character; LaTeX and Markdown hold the same
cells. The command `domainbed.scripts.collect_results` prints and saves them; the paper's
tables (domainbed_itl.tables) reuse the cell format, the table layout and the listing orders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from domainbed import datasets, model_selection
from domainbed.lib import reporting
from domainbed.lib.latex import escape as latex_escape
from domainbed.lib.latex import one_line
from domainbed.lib.query import Q

# The public DomainBed's own listing orders, which its tables follow; names it does not know
# come after these.
PUBLIC_ALGORITHM_ORDER = (
    "ERM ERMPlusPlus Fish IRM GroupDRO Mixup MLDG CORAL MMD DANN CDANN MTL SagNet ARM VREx RSC SD "
    "ANDMask SANDMask IGA SelfReg Fishr TRM IB_ERM IB_IRM CAD CondCAD Transfer CausIRL_CORAL "
    "CausIRL_MMD EQRM RDM ADRMX URM"
).split()
PUBLIC_DATASET_ORDER = (
    "Debug28 Debug224 ColoredMNIST RotatedMNIST VLCS PACS OfficeHome TerraIncognita DomainNet "
    "SVIRO WILDSCamelyon WILDSFMoW SpawriousO2O_easy SpawriousO2O_medium SpawriousO2O_hard "
    "SpawriousM2M_easy SpawriousM2M_medium SpawriousM2M_hard"
).split()


def format_mean(data: Sequence[float], latex: bool) -> tuple[float | None, float | None, str]:
    """(mean, standard error, text) of accuracies in [0, 1], as percentages.

    The error is `reporting.standard_error`, the one definition every table of the project
    uses (the public tables': population standard deviation over sqrt(n)); an empty cell is "X".
    """
    values = list(data)
    if not values:
        return None, None, "X"
    mean = 100 * float(np.mean(values))
    err = 100 * reporting.standard_error(values)
    plus_minus = "$\\pm$" if latex else "+/-"
    return mean, err, f"{mean:.1f} {plus_minus} {err:.1f}"


def _ordered(names: Sequence[str], public: Sequence[str], registered: Sequence[str]) -> list[str]:
    present = set(names)
    first = [name for name in public if name in present]
    second = [name for name in registered if name in present and name not in first]
    rest = sorted(present - set(first) - set(second))
    return first + second + rest


def render_table(
    table: list[list[str]],
    header_text: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    colwidth: int = 10,
    fmt: str = "text",
) -> list[str]:
    """The lines of one table; `col_labels` includes the row-label column's header."""
    rows = [[one_line(str(label)), *cells] for label, cells in zip(row_labels, table, strict=True)]
    col_labels = [one_line(str(label)) for label in col_labels]
    if fmt == "markdown":
        lines = ["", f"#### {header_text}", ""]
        lines.append("| " + " | ".join(str(label) for label in col_labels) + " |")
        lines.append("|" + "|".join([":--"] + ["--:"] * (len(col_labels) - 1)) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in rows)
        return lines
    if fmt == "latex":
        header = ["\\textbf{" + latex_escape(label) + "}" for label in col_labels]
        body = [[latex_escape(row[0]), *row[1:]] for row in rows]
        cells_lines = [
            " & ".join(cell.ljust(colwidth) for cell in row) + " \\\\" for row in [header, *body]
        ]
        return [
            "",
            "\\begin{center}",
            "\\adjustbox{max width=\\textwidth}{%",
            "\\begin{tabular}{l" + "c" * (len(col_labels) - 1) + "}",
            "\\toprule",
            cells_lines[0],
            "\\midrule",
            *cells_lines[1:],
            "\\bottomrule",
            "\\end{tabular}}",
            "\\end{center}",
        ]
    lines = ["", f"-------- {header_text}"]
    for row in [list(col_labels), *rows]:
        lines.append("  ".join(str(cell).ljust(colwidth)[:colwidth] for cell in row) + " ")
    return lines


def _env_labels(dataset: str, records: Q) -> list[str]:
    """The dataset's environment names, or env0, env1, ... for a dataset not registered here."""
    if dataset in datasets.DATASETS:
        return list(datasets.get_dataset_class(dataset).ENVIRONMENTS)
    sample = records.filter_equals("args.dataset", dataset)[0]
    return [f"env{env}" for env in range(reporting.reported_envs(sample))]


def _average_cell(means: list[float | None]) -> str:
    if any(mean is None for mean in means):
        return "X"
    return f"{sum(means) / len(means):.1f}"


def results_tables(
    records: Q, selection_method: type[model_selection.SelectionMethod], fmt: str = "text"
) -> list[str]:
    """The lines of every per-dataset table and the summary table for one selection method."""
    latex = fmt == "latex"
    grouped = (
        reporting.get_grouped_records(records)
        .map(lambda group: {**group, "sweep_acc": selection_method.sweep_acc(group["records"])})
        .filter(lambda group: group["sweep_acc"] is not None)
    )
    algorithms = _ordered(
        list(records.select("args.algorithm").unique()), PUBLIC_ALGORITHM_ORDER, []
    )
    dataset_names = _ordered(
        list(records.select("args.dataset").unique()), PUBLIC_DATASET_ORDER, datasets.DATASETS
    )
    lines: list[str] = []
    for dataset in dataset_names:
        if latex:
            lines += ["", f"\\subsubsection{{{latex_escape(dataset)}}}"]
        env_labels = _env_labels(dataset, records)
        table = []
        for algorithm in algorithms:
            row, means = [], []
            for test_env in range(len(env_labels)):
                accs = grouped.filter_equals(
                    "dataset, algorithm, test_env", (dataset, algorithm, test_env)
                ).select("sweep_acc")
                mean, _, text = format_mean(accs, latex)
                row.append(text)
                means.append(mean)
            table.append([*row, _average_cell(means)])
        header = f"Dataset: {dataset}, model selection method: {selection_method.name}"
        lines += render_table(table, header, algorithms, ["Algorithm", *env_labels, "Avg"], 20, fmt)

    if latex:
        lines += ["", "\\subsubsection{Averages}"]
    table = []
    for algorithm in algorithms:
        row, means = [], []
        for dataset in dataset_names:
            per_trial = (
                grouped.filter_equals("algorithm, dataset", (algorithm, dataset))
                .group("trial_seed")
                .map(lambda _trial, group: group.select("sweep_acc").mean())
            )
            mean, _, text = format_mean(per_trial, latex)
            row.append(text)
            means.append(mean)
        table.append([*row, _average_cell(means)])
    header = f"Averages, model selection method: {selection_method.name}"
    lines += render_table(table, header, algorithms, ["Algorithm", *dataset_names, "Avg"], 25, fmt)
    return lines


def render_report(records: Q, fmt: str = "text") -> str:
    """The whole report for every selection method, as one string ending in a newline."""
    lines: list[str] = []
    if fmt == "latex":
        lines += [
            "\\documentclass{article}",
            "\\usepackage{booktabs}",
            "\\usepackage{adjustbox}",
            "\\begin{document}",
            "\\section{Full DomainBed results}",
            f"% Total records: {len(records)}",
        ]
    else:
        lines.append(f"Total records: {len(records)}")
    for method in model_selection.SELECTION_METHODS:
        if fmt == "latex":
            lines += ["", f"\\subsection{{Model selection: {method.name}}}"]
        elif fmt == "markdown":
            lines += ["", f"## Model selection: {method.name}"]
        lines += results_tables(records, method, fmt)
    if fmt == "latex":
        lines.append("\\end{document}")
    return "\n".join(lines) + "\n"
