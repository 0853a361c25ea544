"""What the user asked for, and the notes every table prints under itself."""

from __future__ import annotations

from dataclasses import dataclass

from domainbed_itl.tables import paper
from domainbed_itl.tables.cells import Cell
from domainbed_itl.tables.scores import Scores

TITLES = {
    "1": "Table 1: accuracy (%) per test domain (the paper's is PACS, ResNet-18)",
    "2": "Table 2: multi-source accuracy (%), mean over test domains",
    "3": "Table 3: ERM with each loss, accuracy (%), mean over test domains "
    "(the paper's is PACS, ResNet-50)",
    "4": "Table 4: single-source accuracy (%), mean over source domains of the mean over "
    "their target domains",
    "5": "Table 5: test-domain accuracy (%) of each loss, learned losses over their "
    "meta-training seeds (+/- standard deviation); the paper's is OfficeHome, ResNet-50",
    "6": "Table 6: ColoredMNIST test-domain accuracy (%), a task-specific learned loss against "
    "the generic ones",
    "9": "Table 9: multi-source accuracy (%) per test domain",
    "10": "Table 10: single-source accuracy (%) per source domain, targets a/b/c (their mean)",
}
LEGEND = (
    "Cells: mean +/- standard error over trial seeds (population std / sqrt(n)). X: no value. "
    "[k missing]: k jobs of the expected grid (trial seeds x hyperparameter seeds x "
    "test-environment sets of the dataset) left no records; nothing is imputed."
)


@dataclass(frozen=True)
class Request:
    table: str
    fmt: str = "text"
    selection: str = "training_domain"
    compare_paper: bool = False
    versus: str | None = None

    @property
    def latex(self) -> bool:
        return self.fmt == "latex"

    def title(self, scores: Scores, where: str = "") -> str:
        where = f", {where}" if where else ""
        return f"{TITLES[self.table]}{where}; model selection: {scores.selection_name}"

    def with_paper(self, text: str, dataset: str, algorithm: str, column: str) -> str:
        if not self.compare_paper:
            return text
        return paper.beside(text, paper.figure(self.table, dataset, algorithm, column), self.latex)

    def notes(self, algorithms: list[str]) -> list[str]:
        notes = [LEGEND]
        names = [
            f"{algorithm} = {label}"
            for algorithm in algorithms
            if (label := paper.row_label(self.table, algorithm))
        ]
        if names:
            notes.append("The paper's names: " + "; ".join(names) + ".")
        if self.compare_paper:
            notes.append(
                f"(paper ...): Gao et al. (ICML 2022), Table {self.table}, as printed "
                "(domainbed_itl/tables/published.json, whose notes list the paper's "
                "inconsistencies; those on this table follow)."
            )
            notes += paper.notes(self.table)
            if self.selection != "training_domain":
                notes.append("The paper's figures use training-domain validation.")
        return notes

    def versus_title(self, scores: Scores, where: str = "") -> str:
        return (
            f"{self.title(scores, where)}; difference from {self.versus}, paired on trial seed "
            "and test domains"
        )

    def versus_notes(self) -> list[str]:
        return [
            f"Each cell: algorithm minus {self.versus} on the same trial seeds and test domains, "
            "mean +/- standard error of the paired differences, percentage points; n = trial "
            "seeds where both have every domain of the cell. X: no such trial."
        ]


def versus_text(cell: Cell, baseline: Cell, latex: bool) -> str:
    return cell.minus(baseline).difference_text(latex)
