"""Fig. 2: Friedman test, Nemenyi post-hoc test and the critical difference diagram.

Blocks are datasets (the paper's Fig. 2: each dataset's mean over its domains, as Table 2
prints it) or (dataset, domain) pairs: test domains for multi-source sweeps, source domains
for single-source ones. Only blocks where every algorithm has a value count. The statistics
come from scipy (Friedman), scikit-posthocs (Nemenyi p-values, the diagram) and scipy's
studentized range distribution (the critical difference, Demsar 2006):
CD = q_alpha * sqrt(k (k + 1) / (6 N)), q_alpha = studentized range quantile(1 - alpha, k, inf)
/ sqrt(2), for k algorithms over N blocks.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from domainbed.lib import atomic
from domainbed_itl.tables.kinds import TableError
from domainbed_itl.tables.per_domain import average_cell, domain_cell
from domainbed_itl.tables.ranks import average_ranks, complete_blocks
from domainbed_itl.tables.scores import Scores

BLOCKS = ("dataset", "domain")
ALPHA = 0.05


@dataclass
class FriedmanNemenyi:
    blocks_label: str
    values: pd.DataFrame  # complete blocks x algorithms, as printed
    statistic: float
    pvalue: float
    q_alpha: float
    critical_difference: float
    ranks: pd.Series
    nemenyi: pd.DataFrame
    alpha: float = ALPHA


def block_values(scores: Scores, datasets: list[str], algorithms: list[str],
                 blocks: str) -> tuple[pd.DataFrame, str]:
    """blocks x algorithms of printed means (NaN where missing), and what a block is."""
    rows, index = [], []
    for dataset in datasets:
        if blocks == "dataset":
            rows.append([average_cell(scores, dataset, a).printed for a in algorithms])
            index.append(dataset)
            continue
        for group in scores.domain_groups(dataset):
            rows.append([domain_cell(scores, dataset, a, group).printed for a in algorithms])
            index.append(f"{dataset}/{group.label}")
    if blocks == "dataset":
        label = "datasets"
    else:
        label = ("(dataset, source domain) pairs" if scores.single_source
                 else "(dataset, test domain) pairs")
    return pd.DataFrame(rows, index=index, columns=algorithms, dtype=float), label


def friedman_nemenyi(values: pd.DataFrame, blocks_label: str,
                     alpha: float = ALPHA) -> FriedmanNemenyi:
    complete = complete_blocks(values)
    k, n = complete.shape[1], complete.shape[0]
    if k < 3 or n < 2:
        raise TableError(
            f"the Friedman test needs at least 3 algorithms and 2 {blocks_label} where every "
            f"algorithm has a value; found {k} algorithms and {n} such {blocks_label}"
        )
    import scikit_posthocs  # with matplotlib, seconds of start-up every other table skips

    columns = [complete[algorithm].to_numpy() for algorithm in complete.columns]
    statistic, pvalue = stats.friedmanchisquare(*columns)
    q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))
    return FriedmanNemenyi(
        blocks_label=blocks_label,
        values=complete,
        statistic=float(statistic),
        pvalue=float(pvalue),
        q_alpha=q_alpha,
        critical_difference=q_alpha * math.sqrt(k * (k + 1) / (6 * n)),
        ranks=average_ranks(complete),
        nemenyi=scikit_posthocs.posthoc_nemenyi_friedman(complete.reset_index(drop=True)),
        alpha=alpha,
    )


def summary_lines(result: FriedmanNemenyi) -> list[str]:
    k, n = result.values.shape[1], result.values.shape[0]
    ranks = ", ".join(f"{name} {rank:.2f}" for name, rank in result.ranks.sort_values().items())
    return [
        f"Friedman test over {n} {result.blocks_label} (blocks) and {k} algorithms: "
        f"chi-square = {result.statistic:.3f}, p = {result.pvalue:.4g}",
        f"Nemenyi critical difference (alpha = {result.alpha}): CD = "
        f"{result.critical_difference:.3f} (q_alpha = {result.q_alpha:.3f})",
        f"Average ranks (1 = best): {ranks}",
        "Blocks: " + ", ".join(result.values.index),
    ]


def draw(result: FriedmanNemenyi, path: str) -> None:
    """Write the diagram to `path` whole or not at all (a temporary file renamed over it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs

    k = result.values.shape[1]
    figure, axes = plt.subplots(figsize=(8, 1.2 + 0.35 * k))
    scikit_posthocs.critical_difference_diagram(
        result.ranks, result.nemenyi, ax=axes, alpha=result.alpha,
        cd=result.critical_difference,
    )
    axes.set_title(
        f"Average rank over {result.values.shape[0]} {result.blocks_label}; Friedman "
        f"p = {result.pvalue:.3g}, Nemenyi CD = {result.critical_difference:.2f}",
        fontsize=9, pad=28,  # above the diagram's own CD bar
    )
    image_format = os.path.splitext(path)[1].lstrip(".") or "png"
    try:
        with atomic.atomic_open(path, "wb") as handle:
            figure.savefig(handle, format=image_format, bbox_inches="tight", dpi=150)
    finally:
        plt.close(figure)
