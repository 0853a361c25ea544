"""Deploying a loss on a domain it never saw, by the meta-learner's own yardstick, and the one
record format every deployment writes.

DomainBed's ERM with MNIST_CNN costs about a second per step on a 2-core CPU, so a comparison
that lets each loss train to its plateau does not fit minutes there. The MLP protocol trains the
meta-learner's own base model (`meta.base_model`, 784-1024-256-10 ReLU) by plain SGD with the
inner loop's batch of 32: milliseconds a step, the kind of problem a learned loss was optimised
for. Each run trains on the source domains' `in` splits and reports the accuracy on the whole
test domain and on the sources' held-out `out` splits (split as DomainBed splits them, by the
trial seed). The trial seed also fixes the initial weights and every minibatch, identically for
every loss, so two losses on the same (test env, trial seed) form a pair.

The default step size and step count were chosen by measurement so that each loss reaches its
plateau and the table ranks losses, not training budgets: at the meta-learner's inner lr, 0.01,
cross-entropy and the published ITL (whose gradients are smaller) are still climbing after
32,000 steps on RotatedMNIST's held-out 0 degrees, while at lr 0.1 all three losses measured
(CE, ITL, a learned loss) level off by 32,000 steps. `--lr 0.01` gives the inner loop's own.

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
import multiprocessing
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from domainbed.lib import atomic
from domainbed.lib.cli import UsageError
from domainbed.lib.misc import seed_hash, split_dataset
from domainbed.lib.reporting import standard_error
from domainbed_itl.losses.learned import (
    LearnedLoss,
    LearnedLossError,
    preset_name,
    preset_provenance,
)
from domainbed_itl.losses.taylor import ITL_OMEGA
from domainbed_itl.meta import data as meta_data
from domainbed_itl.meta.base_model import accuracy, init_mlp
from domainbed_itl.meta.inner import LossFn, sample_batches, train_on_batches
from domainbed_itl.meta.run_files import CHECKPOINT, SEARCH_STATE
from domainbed_itl.meta.splits import MetaConfig
from domainbed_itl.meta.state import CheckpointError, load_checkpoint

PROTOCOLS = ("mlp", "domainbed")
CE_LABEL = "CE"
ITL_LABEL = "ITL (Table 8)"
RECORDS = "records.jsonl"
# Measured on RotatedMNIST, test env 0, trial seed 0 (README, "Deploying on unseen domains").
DEFAULT_STEPS = 32_000
DEFAULT_LR = 0.1
# DomainBed's default --holdout_fraction: the share of each source domain held out.
HOLDOUT_FRACTION = 0.2
META_KEYS = ("dataset", "seed", "exclude_envs")


# --- What is deployed -------------------------------------------------------------------------


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
    directory holding the file (meta.train's checkpoint.pt, meta.cmaes's state.json: outer
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


# --- The MLP protocol -------------------------------------------------------------------------


@dataclass(frozen=True)
class MLPProtocol:
    """The settings of an MLP deployment; `seed` is the dataset seed (as in meta.train and
    DomainBed's --seed: which images each environment gets), not the trial seed."""

    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    batch_size: int = MetaConfig.inner_batch
    hidden: tuple[int, ...] = MetaConfig.hidden
    holdout_fraction: float = HOLDOUT_FRACTION
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or any(h < 1 for h in self.hidden):
            raise ValueError("--steps, --batch_size and --hidden must be at least 1")
        if not self.lr > 0:
            raise ValueError("--lr must be positive")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError("the holdout fraction must lie in (0, 1)")

    def settings(self) -> dict[str, Any]:
        """The record's `settings`: everything but the step count."""
        out = dataclasses.asdict(self)
        del out["steps"]
        out["hidden"] = list(self.hidden)
        return out


@dataclass
class Pool:
    """Every environment flattened into one tensor (domain d owns rows blocks[d]), so that runs
    index rows instead of copying the source domains for every test env."""

    x: torch.Tensor
    y: torch.Tensor
    blocks: list[tuple[int, int]]
    num_classes: int

    @classmethod
    def of(cls, domains: Sequence[tuple[torch.Tensor, torch.Tensor]],
           num_classes: int) -> Pool:
        blocks, start = [], 0
        for _, y in domains:
            blocks.append((start, start + len(y)))
            start += len(y)
        x = torch.cat([x.reshape(len(x), -1).float() for x, _ in domains])
        return cls(x, torch.cat([y.long() for _, y in domains]), blocks, num_classes)


@dataclass
class Task:
    """One test env under one trial seed: the rows a run trains on, the source domains' held-out
    rows and the test domain's rows."""

    test_env: int
    trial_seed: int
    train_rows: torch.Tensor
    source_out_rows: list[torch.Tensor]
    test_rows: torch.Tensor


def make_task(pool: Pool, test_env: int, trial_seed: int,
              holdout_fraction: float = HOLDOUT_FRACTION) -> Task:
    """Each source domain split into out / in as DomainBed's train splits it for this trial
    seed; the test domain whole."""
    if not 0 <= test_env < len(pool.blocks):
        raise ValueError(f"test env {test_env} out of range: the dataset has environments "
                         f"0..{len(pool.blocks) - 1}")
    train, held_out = [], []
    for env, (start, end) in enumerate(pool.blocks):
        if env == test_env:
            continue
        n = end - start
        out, rest = split_dataset(range(n), int(n * holdout_fraction), seed_hash(trial_seed, env))
        held_out.append(start + torch.tensor(out.keys, dtype=torch.long))
        train.append(start + torch.tensor(rest.keys, dtype=torch.long))
    start, end = pool.blocks[test_env]
    return Task(test_env, trial_seed, torch.cat(train), held_out, torch.arange(start, end))


@dataclass(frozen=True)
class Scores:
    """Accuracies after `step` steps; `finite` is False if training went non-finite."""

    step: int
    test_acc: float
    source_acc: float
    finite: bool


def train_and_score(pool: Pool, task: Task, loss_fn: LossFn, protocol: MLPProtocol,
                    score_at: Iterable[int] | None = None) -> list[Scores]:
    """Train a fresh MLP on the task's source rows with `loss_fn` and score it after each step
    count of `score_at` (default: protocol.steps only).

    Initial weights, then the minibatches of all steps, come from one generator seeded by the
    trial seed and the test env: every loss sees the same model and the same batches.
    """
    points = sorted(set(score_at or [protocol.steps]))
    g = torch.Generator().manual_seed(seed_hash(task.trial_seed, "mlp deploy", task.test_env))
    params = init_mlp((pool.x.shape[1], *protocol.hidden, pool.num_classes), g)
    batches = task.train_rows[sample_batches(len(task.train_rows), points[-1],
                                             protocol.batch_size, g)]
    scores, done, finite = [], 0, True
    for point in points:
        if finite:
            finite = train_on_batches(params, pool.x, pool.y, loss_fn, batches[done:point],
                                      protocol.lr).finite
        done = point
        source = [accuracy(params, pool.x[r], pool.y[r]) for r in task.source_out_rows]
        test = accuracy(params, pool.x[task.test_rows], pool.y[task.test_rows])
        scores.append(Scores(point, test, sum(source) / len(source), finite))
    return scores


@dataclass(frozen=True)
class Job:
    """One run to train: a loss on one test env under one trial seed."""

    test_env: int
    trial_seed: int
    candidate: Candidate


class Runner:
    """Trains jobs on one dataset, loaded once per process."""

    def __init__(self, dataset: str, data_dir: str, protocol: MLPProtocol) -> None:
        domains, num_classes = meta_data.load_domains(dataset, data_dir, protocol.seed)
        self.pool = Pool.of(domains, num_classes)
        self.protocol = protocol

    def __call__(self, job: Job) -> tuple[Job, Scores, float]:
        """The job, its scores and its wall time in seconds."""
        start = time.perf_counter()
        task = make_task(self.pool, job.test_env, job.trial_seed, self.protocol.holdout_fraction)
        (scores,) = train_and_score(self.pool, task, job.candidate.loss_fn(), self.protocol)
        return job, scores, time.perf_counter() - start


_worker_runner: Runner | None = None


def _start_worker(dataset: str, data_dir: str, protocol: MLPProtocol) -> None:
    global _worker_runner
    torch.set_num_threads(1)
    _worker_runner = Runner(dataset, data_dir, protocol)


def _work(job: Job) -> tuple[Job, Scores, float]:
    assert _worker_runner is not None
    return _worker_runner(job)


def run_jobs(jobs: Sequence[Job], dataset: str, data_dir: str, protocol: MLPProtocol,
             workers: int = 1) -> Iterator[tuple[Job, Scores, float]]:
    """Train every job on one torch thread, yielding each as it finishes; `workers` > 1 trains
    that many side by side, in processes that load the data themselves.

    One thread, because the float rounding of a run depends on the thread count and hundreds
    of SGD steps amplify it (ITL after 1,500 steps: 64.9% on two threads, 63.7% on one): a run
    must give the same record wherever it runs. Workers, because one run's small matrix
    products gain little from threads (on the project's shared 2-core CPU, four runs took 57 s
    with two workers against 172 s in one process on two threads).
    """
    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            runner = Runner(dataset, data_dir, protocol)
            yield from map(runner, jobs)
        finally:
            torch.set_num_threads(threads)
        return
    # Spawned, not forked: a fork of a process whose OpenMP pool has run can hang.
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(jobs)), _start_worker,
                      (dataset, data_dir, protocol)) as pool:
        yield from pool.imap_unordered(_work, jobs)


# --- Records ----------------------------------------------------------------------------------


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


def mlp_record(dataset: str, job: Job, protocol: MLPProtocol, scores: Scores,
               seconds: float) -> Record:
    c = job.candidate
    return Record("mlp", dataset, job.test_env, job.trial_seed, c.label, c.algorithm,
                  c.hparams, c.meta, protocol.steps, protocol.settings(), scores.test_acc,
                  scores.source_acc, seconds)


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


# --- The table --------------------------------------------------------------------------------


def mean_se(values: Sequence[float], signed: bool = False) -> str:
    """`mean ± SE` in percent points (DomainBed's standard error)."""
    mean = 100 * sum(values) / len(values)
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return text if len(values) < 2 else f"{text} ± {100 * standard_error(values):.1f}"


def caption(record: Record, trial_seeds: Sequence[int]) -> str:
    """What the table's numbers are, from the protocol its records share."""
    s = record.settings
    if record.protocol == "mlp":
        how = (f"MLP protocol: the meta-learner's base model (hidden {s['hidden']}, ReLU) "
               f"trained {record.steps} SGD steps (lr {s['lr']}, batch {s['batch_size']}) on the "
               "source domains; test accuracy on the whole test domain")
    else:
        how = (f"DomainBed protocol: ERM's network, {record.steps} steps, default "
               "hyperparameters; test accuracy on the test domain's in split")
    return (f"{record.dataset}, {how}; trial seeds {list(trial_seeds)}; accuracy (%), mean ± "
            "standard error over trial seeds; source: the source domains' held-out accuracy; "
            f"vs {CE_LABEL}: the paired difference (same test env and trial seed), mean ± "
            "standard error, and in how many pairs the loss is ahead")


def table(records: Sequence[Record], labels: Sequence[str] | None = None) -> str:
    """A row per loss (in `labels` order, default: first appearance), a column per test env,
    the source accuracy and, when CE is among the records, the paired difference against it."""
    if not records:
        raise ValueError("no deployment records to tabulate")
    labels = list(labels or dict.fromkeys(r.loss for r in records))
    envs = sorted({r.test_env for r in records})
    by_run = {r.run: r for r in records}
    cells = ["loss", *(f"env{e} (test)" for e in envs)]
    cells += ["avg"] * (len(envs) > 1) + ["source"] + [f"vs {CE_LABEL}"] * (CE_LABEL in labels)
    lines = ["| " + " | ".join(cells) + " |", "|---" * len(cells) + "|"]
    for label in labels:
        mine = [r for r in records if r.loss == label]
        row = [label]
        for env in envs:
            accs = [r.test_acc for r in mine if r.test_env == env]
            row.append(mean_se(accs) if accs else "")
        if len(envs) > 1:
            row.append(f"{100 * sum(r.test_acc for r in mine) / len(mine):.1f}")
        row.append(f"{100 * sum(r.source_acc for r in mine) / len(mine):.1f}")
        if CE_LABEL in labels:
            row.append(paired_difference(mine, by_run) if label != CE_LABEL else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_difference(mine: Iterable[Record],
                      by_run: dict[tuple[str, int, int], Record]) -> str:
    """Test accuracy minus CE's on the same (test env, trial seed), over the pairs that have
    both."""
    diffs = [r.test_acc - by_run[CE_LABEL, r.test_env, r.trial_seed].test_acc for r in mine
             if (CE_LABEL, r.test_env, r.trial_seed) in by_run]
    if not diffs:
        return ""
    ahead = sum(d > 0 for d in diffs)
    return f"{mean_se(diffs, signed=True)} ({ahead}/{len(diffs)} ahead)"


def provenance(records: Sequence[Record]) -> list[str]:
    """Where each learned row comes from, and whether its meta-training saw a test domain
    (then its row is no domain-generalisation result)."""
    lines = []
    for label, meta in {r.loss: r.meta for r in records if r.meta}.items():
        envs = sorted({r.test_env for r in records if r.loss == label})
        line = (f"{label}: meta-learned on {meta['dataset']} without environments "
                f"{meta['exclude_envs']} ({meta['family']}, order {meta['order']}, "
                f"{meta['outer_steps']} outer steps; {meta['run_dir']})")
        seen = [e for e in envs if e not in (meta["exclude_envs"] or [])]
        if meta["dataset"] == records[0].dataset and seen:
            line += f"; it SAW test environment(s) {seen} during meta-training"
        lines.append(line)
    return lines


def report(records: Sequence[Record], labels: Sequence[str] | None = None) -> str:
    """The caption, the table and where the learned losses come from."""
    trials = sorted({r.trial_seed for r in records})
    notes = "".join(f"\n{line}" for line in provenance(records))
    return caption(records[0], trials) + "\n\n" + table(records, labels) + "\n" + notes + (
        "\n" if notes else "")

