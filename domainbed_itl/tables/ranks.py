"""Average ranks over blocks (datasets, or dataset-domain pairs), as Table 2's last row.

Rank 1 is the highest accuracy; tied values share the average of their ranks. Values are ranked
as printed (one decimal) so that a reader can check every rank from the table itself. Only
complete blocks count, those where every algorithm has a value.
"""

from __future__ import annotations

import pandas as pd
from scipy.stats import rankdata


def complete_blocks(values: pd.DataFrame) -> pd.DataFrame:
    """The rows (blocks) of a blocks x algorithms frame where no algorithm lacks a value."""
    return values.dropna(axis=0, how="any")


def block_ranks(values: pd.DataFrame) -> pd.DataFrame:
    """Per-block ranks, 1 = best, ties averaged, of a frame with complete rows."""
    ranks = [rankdata(-row.to_numpy(dtype=float), method="average") for _, row in values.iterrows()]
    return pd.DataFrame(ranks, index=values.index, columns=values.columns)


def average_ranks(values: pd.DataFrame) -> pd.Series:
    """Mean rank of each algorithm over the complete blocks (empty if there are none)."""
    complete = complete_blocks(values)
    if complete.empty:
        return pd.Series(dtype=float)
    return block_ranks(complete).mean(axis=0)
