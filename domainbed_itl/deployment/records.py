"""The one record format every deployment writes, so one reader tabulates both protocols.

A deployment record, one JSON line per finished (loss, test env, trial seed) run, is the same
for this protocol ("mlp") and for DomainBed runs ("domainbed", written by compare_losses), so one
reader (`read_records`, `table`) serves both:

    {"protocol", "dataset", "test_env", "trial_seed", "loss" (the row label), "algorithm" (how
     DomainBed deploys it: ERM, ERM_ITL, ERM_iSCE), "hparams" (its --hparams form, {} for CE and
     the published ITL, which are the algorithms' defaults), "meta" (the meta-training run the
     loss comes from, or null), "steps", "settings" (the protocol's other settings), "test_acc",
     "source_acc", "seconds"}
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainbed.lib import atomic
from domainbed.lib.cli import UsageError
from domainbed_itl.deployment.candidates import Candidate

PROTOCOLS = ("mlp", "domainbed")
RECORDS = "records.jsonl"


@dataclass(frozen=True)
class Record:
    """One finished deployment run (the module docstring gives the format); `seconds` is None
    for a DomainBed run that had finished before its record was written."""

    protocol: str
    dataset: str
    test_env: int
    trial_seed: int
    loss: str
    algorithm: str
    hparams: dict[str, Any]
    meta: dict[str, Any] | None
    steps: int
    settings: dict[str, Any]
    test_acc: float
    source_acc: float
    seconds: float | None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}")

    @property
    def run(self) -> tuple[str, int, int]:
        """What identifies the run within one output directory."""
        return self.loss, self.test_env, self.trial_seed

    def key(self) -> str:
        """Everything that says which run this is (all but its results and the loss's
        provenance), as canonical JSON: two records with one key report the same run."""
        fields = dataclasses.asdict(self)
        for measured in ("test_acc", "source_acc", "seconds", "meta"):
            del fields[measured]
        return json.dumps(fields, sort_keys=True)

    def protocol_settings(self) -> dict[str, Any]:
        """What every run of one output directory must share."""
        return {"protocol": self.protocol, "dataset": self.dataset, "steps": self.steps,
                "settings": self.settings}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=False)


def read_records(path: Path) -> list[Record]:
    """The records of a records.jsonl (none if it does not exist); UsageError naming the line
    that is not a record."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(Record(**json.loads(line)))
        except (ValueError, TypeError) as err:
            raise UsageError(f"{path} line {number} is not a deployment record "
                             f"({' '.join(str(err).split())[:200]}); move the file away to "
                             "start over") from None
    return records


def append_record(path: Path, record: Record) -> None:
    """Add one line; the file is replaced whole, so a kill never leaves half a line."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    atomic.write_text(path, old + record.to_json() + "\n")


def check_same_protocol(records: Iterable[Record], wanted: dict[str, Any], where: Path) -> None:
    """UsageError listing every protocol setting in which the recorded runs differ from
    `wanted` (a Record.protocol_settings())."""
    differing: dict[str, tuple[Any, Any]] = {}
    for record in records:
        have = record.protocol_settings()
        flat_have = {**have["settings"], **{k: v for k, v in have.items() if k != "settings"}}
        flat_want = {**wanted["settings"], **{k: v for k, v in wanted.items() if k != "settings"}}
        for key in sorted(flat_have.keys() | flat_want.keys()):
            if flat_have.get(key) != flat_want.get(key):
                differing.setdefault(key, (flat_have.get(key), flat_want.get(key)))
    if differing:
        listed = "; ".join(f"{k}: recorded {a!r}, now {b!r}" for k, (a, b) in differing.items())
        raise UsageError(f"{where} holds runs made with other settings ({listed}); rerun with "
                         "the same settings to add runs, or choose another --output_dir")


def check_same_losses(records: Iterable[Record], candidates: Iterable[Candidate],
                      where: Path) -> None:
    """UsageError if a label names another loss than the one it was recorded with."""
    recorded = {r.loss: (r.algorithm, r.hparams) for r in records}
    for c in candidates:
        if c.label in recorded and recorded[c.label] != (c.algorithm, c.hparams):
            raise UsageError(f"{where} holds runs of another loss labelled {c.label!r}; give "
                             "this one another LABEL, or choose another --output_dir")
