"""One table cell: accuracies per trial seed, shown as mean +/- standard error in percent.

The standard error is `domainbed.lib.reporting.standard_error` (through DomainBed's
`format_mean`), the one definition of the project. A cell whose sweep lacks jobs says how many
("[3 missing]"); a cell with no value is "X" as in DomainBed. Nothing is imputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from domainbed.lib import reporting
from domainbed.lib.results_tables import format_mean

DECIMALS = 1


@dataclass(frozen=True)
class Cell:
    per_trial: dict[int, float]
    missing_jobs: int = 0

    @property
    def mean(self) -> float | None:
        """The mean in percent, or None for an empty cell."""
        return 100 * float(np.mean(list(self.per_trial.values()))) if self.per_trial else None

    @property
    def printed(self) -> float | None:
        """The mean as the table prints it: what ranks and the Friedman test use."""
        return None if self.mean is None else round(self.mean, DECIMALS)

    def missing_suffix(self) -> str:
        return f" [{self.missing_jobs} missing]" if self.missing_jobs else ""

    def text(self, latex: bool) -> str:
        return format_mean(list(self.per_trial.values()), latex)[2] + self.missing_suffix()

    def minus(self, baseline: Cell) -> Cell:
        """Paired differences: same trial seeds (each trial's value already pairs domains)."""
        shared = sorted(set(self.per_trial) & set(baseline.per_trial))
        return Cell({trial: self.per_trial[trial] - baseline.per_trial[trial] for trial in shared})

    def difference_text(self, latex: bool) -> str:
        """Signed mean +/- standard error of paired differences, and how many pairs."""
        values = list(self.per_trial.values())
        if not values:
            return "X"
        plus_minus = "$\\pm$" if latex else "+/-"
        mean, err = 100 * float(np.mean(values)), 100 * reporting.standard_error(values)
        signed = f"{mean:+.{DECIMALS}f}"
        if float(signed) == 0:  # no sign on a difference that prints as zero
            signed = signed[1:]
        return f"{signed} {plus_minus} {err:.{DECIMALS}f} (n={len(values)})"


def number(value: float | None) -> str:
    return "X" if value is None else f"{value:.{DECIMALS}f}"
