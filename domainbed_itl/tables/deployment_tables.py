"""Tables 5 and 6: learned losses deployed on target domains, from deployment records.

Table 5 asks how much a learned loss depends on its meta-training seed and dataset. Its rows
are the learned losses, one per meta-training dataset, family and order, each cell the mean
+/- standard deviation over meta-training seeds (the paper's +/- there is over meta-train
seeds); its columns every (dataset, test environment) deployed on, then Avg. The paper's Table
5 is OfficeHome with a ResNet-50, which this project cannot run on a CPU; `--compare_paper`
prints it under ours, labelled, rather than beside cells it does not correspond to.

Table 6 asks whether a loss meta-learned on ColoredMNIST itself (task-specific) beats the
generic one meta-learned on RotatedMNIST, on ColoredMNIST's environments. Every cell there is
the mean +/- standard error over trial seeds of the mean over meta seeds, the figure its paired
differences are taken on.

Both tables add CE and the published ITL ("ITL (Table 8)") as fixed-loss rows (mean +/-
standard error over trial seeds) and a second table of paired differences. Each training
protocol (`deploy_records.Block`) gets its own tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from domainbed import datasets
from domainbed.lib.results_tables import PUBLIC_DATASET_ORDER
from domainbed_itl.tables import order, paper
from domainbed_itl.tables.cells import Cell
from domainbed_itl.tables.deploy_records import CE, PUBLISHED_ITL, Block, Run, blocks
from domainbed_itl.tables.deploy_rows import (
    Column,
    Row,
    build_rows,
    deployed_by,
    describe,
    seed_cell,
    trial_cell,
)
from domainbed_itl.tables.kinds import TableError
from domainbed_itl.tables.render import Table
from domainbed_itl.tables.request import TITLES, Request

TABLE6_DATASET = "ColoredMNIST"
TASK_SPECIFIC = "Task-specific "
PUBLISHED5_ROWS = ("ITL-Net (RotatedMNIST)", "ITL-Net (RotatedKMNIST)")
PUBLISHED5_COLUMNS = ("A", "C", "P", "R", "Avg")
GRID_NOTE = (
    "Avg: the mean over the columns, per meta-training seed (per trial seed for the other "
    "rows), over those that have every column. [k missing]: k runs of the grid (meta seeds x "
    "trial seeds, per column) left no record; nothing is imputed."
)
SEEN_NOTE = (
    "(seen): a learned loss in this cell was meta-trained on data of its test environment, so "
    "the cell is not a domain-generalization result."
)
PAIRED_NOTE = (
    "Each cell: the row's loss minus the baseline's, paired on (trial seed, dataset, test "
    "environment), a learned loss's side averaged over its meta-training seeds first; mean +/- "
    "standard error of the paired differences over trial seeds, percentage points; n = trial "
    "seeds where both have the column (Avg: every column). X: no such trial."
)


def env_name(dataset: str, env: int) -> str:
    """The registered environment name, or env<N> for a dataset not registered here."""
    if dataset in datasets.DATASETS:
        names = datasets.get_dataset_class(dataset).ENVIRONMENTS
        if env < len(names):
            return names[env]
    return f"env{env}"


def _columns(runs: Sequence[Run]) -> list[Column]:
    names = order.ordered({run.dataset for run in runs}, [], PUBLIC_DATASET_ORDER)
    return [(dataset, env) for dataset in names
            for env in sorted({run.test_env for run in runs if run.dataset == dataset})]


def _column_label(column: Column, one_dataset: bool) -> str:
    dataset, env = column
    return env_name(dataset, env) if one_dataset else f"{dataset} {env_name(dataset, env)}"


def _printed(figure: str | None, latex: bool) -> str:
    if figure is None:
        return "X"
    return figure.replace("±", "$\\pm$") if latex else figure


def _block_notes(block: Block, trials: list[int], rows: list[Row]) -> list[str]:
    notes = [GRID_NOTE, "Trial seeds: " + " ".join(map(str, trials)) + "."]
    if any(row.seen for row in rows):
        notes.append(SEEN_NOTE)
    notes += [describe(row) for row in rows if row.learned is not None]
    if block.settings != "{}":
        notes.append(f"Training settings: {block.settings}")
    return notes


def _paired(minuend: Row, baseline: Row, columns: list[Column], trials: list[int],
            latex: bool) -> list[str]:
    def difference(cols: list[Column]) -> str:
        cell = Cell(minuend.per_trial(cols, trials))
        return cell.minus(Cell(baseline.per_trial(cols, trials))).difference_text(latex)

    return [difference([column]) for column in columns] + [difference(columns)]


def _differences(title: str, pairs: list[tuple[Row, Row]], columns: list[Column],
                 labels: list[str], trials: list[int], latex: bool) -> list[Table]:
    if not pairs:
        return []
    rows = [(f"{a.label} - {b.label}", _paired(a, b, columns, trials, latex)) for a, b in pairs]
    return [Table(title + "; paired differences", "Difference", labels, rows, [PAIRED_NOTE])]


def _by_label(rows: list[Row], name: str) -> list[Row]:
    return [row for row in rows if row.label == name]


def _table5_block(block: Block, runs: list[Run], request: Request) -> list[Table]:
    columns = _columns(runs)
    trials = sorted({run.trial_seed for run in runs})
    one_dataset = len({dataset for dataset, _ in columns}) == 1
    labels = [_column_label(column, one_dataset) for column in columns] + ["Avg"]
    fixed, learned = build_rows(runs)
    latex = request.latex
    rows = []
    for row in fixed:
        cells = [trial_cell(row, [column], trials, latex) for column in columns]
        rows.append((row.label, cells + [trial_cell(row, columns, trials, latex)]))
    for row in learned:
        cells = [seed_cell(row, [column], trials, latex) for column in columns]
        rows.append((row.label, cells + [seed_cell(row, columns, trials, latex)]))
    notes = [
        "Learned rows (ITL-Net (D): the loss meta-learned on dataset D): each meta-training "
        "seed's mean over trial seeds, then mean +/- standard deviation over meta-training "
        "seeds (population, ddof 0), as the paper's Table 5 gives its +/- over meta-train seeds. "
        f"{CE} and {PUBLISHED_ITL} (the paper's published coefficients): mean +/- standard "
        "error over trial seeds.",
        *_block_notes(block, trials, fixed + learned),
    ]
    title = f"{TITLES['5']}; {block.describe()}"
    ce, itl = _by_label(fixed, CE), _by_label(fixed, PUBLISHED_ITL)
    pairs = [(row, base) for row in learned for base in ce + itl]
    pairs += [(row, base) for row in fixed if row.label != CE for base in ce]
    return [Table(title, "Loss", labels, rows, notes),
            *_differences(title, pairs, columns, labels, trials, latex)]


def _published5(request: Request) -> Table:
    rows = [
        (name, [_printed(paper.figure("5", "OfficeHome", name, column), request.latex)
                for column in PUBLISHED5_COLUMNS])
        for name in PUBLISHED5_ROWS
    ]
    notes = [
        "Gao et al. (ICML 2022), Table 5, as printed (domainbed_itl/tables/published.json): "
        "ERM with the loss learned under each meta-training dataset, deployed on OfficeHome "
        "with a ResNet-50, mean +/- standard deviation over meta-training seeds. Other datasets "
        "and network than the tables above: compare how the rows differ, not the cells.",
        *paper.notes("5"),
    ]
    return Table("The paper's Table 5 (OfficeHome A/C/P/R, ResNet-50)", "Loss",
                 list(PUBLISHED5_COLUMNS), rows, notes)


def table5(runs: list[Run], request: Request) -> list[Table]:
    tables = []
    for block, members in blocks(runs).items():
        tables += _table5_block(block, members, request)
    if request.compare_paper:
        tables.append(_published5(request))
    return tables


def _paper_row(row: Row) -> str | None:
    """The paper's Table 6 row a row of ours reproduces, if any."""
    if row.label.startswith(TASK_SPECIFIC):
        return "Task-specific ITL-Net"
    if row.label == PUBLISHED_ITL or (row.learned is not None
                                      and deployed_by(row.learned.family) == "ERM_ITL"):
        return "ERM_ITL"
    return None


def _table6_block(block: Block, runs: list[Run], request: Request) -> list[Table]:
    columns = _columns(runs)
    trials = sorted({run.trial_seed for run in runs})
    labels = [_column_label(column, True) for column in columns] + ["Avg"]
    fixed, learned = build_rows(runs)
    generic = [row for row in learned if row.learned.dataset != TABLE6_DATASET]
    task = [row for row in learned if row.learned.dataset == TABLE6_DATASET]
    for row in task:
        row.label = TASK_SPECIFIC + row.label
    latex = request.latex
    rows = []
    for row in fixed + generic + task:
        cells = [trial_cell(row, [column], trials, latex) for column in columns]
        cells.append(trial_cell(row, columns, trials, latex))
        published = _paper_row(row)
        if request.compare_paper and published is not None:
            cells = [paper.beside(cell, paper.figure("6", TABLE6_DATASET, published, label),
                                  latex)
                     for cell, label in zip(cells, labels, strict=True)]
        rows.append((row.label, cells))
    notes = [
        "Every cell: mean +/- standard error over trial seeds; a learned row's value per trial "
        "seed is its mean over meta-training seeds (each seed a separately learned loss, "
        "deployed with the same trial seeds).",
        f"Generic rows: losses meta-learned on another dataset. {TASK_SPECIFIC.strip()}: "
        f"meta-learned on {TABLE6_DATASET} itself, honestly only without the test environment "
        "(leave-one-out: the loss tested on one environment was meta-trained on the others).",
        *_block_notes(block, trials, fixed + learned),
    ]
    if request.compare_paper:
        notes.append(
            "(paper ...): Gao et al. (ICML 2022), Table 6, as printed: its ITL-NET row beside "
            f"{PUBLISHED_ITL} (those are its coefficients) and beside our generic learned "
            "losses, its Task-specific ITL-NET beside ours. The paper's network is DomainBed's "
            "MNIST ConvNet; its +/- is not defined."
        )
        notes += paper.notes("6")
    title = f"{TITLES['6']}; {block.describe()}"
    ce = _by_label(fixed, CE)
    pairs = [(t, g) for t in task for g in generic]
    pairs += [(row, base) for row in fixed + generic + task if row.label != CE for base in ce]
    return [Table(title, "Loss", labels, rows, notes),
            *_differences(title, pairs, columns, labels, trials, latex)]


def table6(runs: list[Run], request: Request) -> list[Table]:
    targets = [run for run in runs if run.dataset == TABLE6_DATASET]
    if not targets:
        found = ", ".join(sorted({run.dataset for run in runs}))
        raise TableError(f"table 6 reads runs deployed on {TABLE6_DATASET}; these records are "
                         f"on {found}")
    tables = []
    for block, members in blocks(targets).items():
        tables += _table6_block(block, members, request)
    ignored = len(runs) - len(targets)
    if ignored:
        tables[0].notes.append(f"{ignored} runs on other datasets than {TABLE6_DATASET} are "
                               "not part of Table 6 and were left out.")
    return tables
