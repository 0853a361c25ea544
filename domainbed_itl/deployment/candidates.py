"""The losses a deployment compares: the two baselines every table starts with and the learned
losses users name, each checked before the first run and traced to the meta-training run it came
from, so a table can say whether that run saw the test domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from domainbed.lib.cli import UsageError
from domainbed_itl.losses.learned import (
    LearnedLoss,
    LearnedLossError,
    preset_name,
    preset_provenance,
)
from domainbed_itl.losses.taylor_polynomial import ITL_OMEGA
from domainbed_itl.meta.inner import LossFn
from domainbed_itl.meta.run_files import CHECKPOINT, SEARCH_STATE
from domainbed_itl.meta.state import CheckpointError, load_checkpoint

CE_LABEL = "CE"
ITL_LABEL = "ITL (Table 8)"
META_KEYS = ("dataset", "seed", "exclude_envs")


@dataclass(frozen=True)
class Candidate:
    """One loss to deploy: its row label, how DomainBed deploys it (algorithm, hparams), the
    meta-training run it comes from (None for the baselines and for files of unknown origin)
    and the learned loss itself (None for cross-entropy)."""

    label: str
    algorithm: str
    hparams: dict[str, Any]
    meta: dict[str, Any] | None = None
    loss: LearnedLoss | None = None

    def loss_fn(self) -> LossFn:
        return F.cross_entropy if self.loss is None else self.loss.module()


def baselines() -> list[Candidate]:
    """Cross-entropy and the published ITL (Table 8), always the first two rows."""
    return [Candidate(CE_LABEL, "ERM", {}),
            Candidate(ITL_LABEL, "ERM_ITL", {}, loss=LearnedLoss("taylor", ITL_OMEGA))]


def learned_candidate(spec: str) -> Candidate:
    """`LABEL=FILE` or `LABEL=preset:NAME` (LABEL defaults to the preset's name or the file's
    folder) -> the candidate, its file read and checked now; UsageError if it cannot deploy."""
    label, _, source = spec.rpartition("=")
    try:
        loss = LearnedLoss.from_file(source)
        meta = meta_provenance(source, loss)
    except (LearnedLossError, CheckpointError) as err:
        raise UsageError(str(err)) from None
    algorithm, hparams = loss.deployment()
    label = label or preset_name(source) or Path(source).parent.name
    return Candidate(label, algorithm, hparams, meta, loss)


def meta_provenance(source: str, loss: LearnedLoss) -> dict[str, Any] | None:
    """The meta-training run behind a learned loss: a preset's shipped provenance, or the run
    directory holding the file (meta_train's checkpoint.pt, meta_cmaes's state.json: outer
    steps or generations done); None when the file lies outside a meta-training run."""
    name = preset_name(source)
    if name is not None:
        return preset_provenance(name).get("meta")
    run_dir = Path(source).parent
    checkpoint = load_checkpoint(run_dir / CHECKPOINT, ("config", "step"))
    if checkpoint is not None:
        config, steps = checkpoint["config"], checkpoint["step"]
    elif (run_dir / SEARCH_STATE).exists():
        # Imported here: it needs pycma, an optional extra that only CMA-ES runs install.
        from domainbed_itl.meta.cma_state import StateError, read_state

        try:
            state = read_state(run_dir / SEARCH_STATE, len(loss.parameters))
        except StateError as err:
            raise UsageError(str(err)) from None
        config, steps = state.config, len(state.records)
    else:
        return None
    return {**{k: config.get(k) for k in META_KEYS}, "family": loss.family,
            "order": loss.order, "outer_steps": steps, "run_dir": str(run_dir)}
