"""Deploying a loss on a domain it never saw, by the meta-learner's own yardstick.

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
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from domainbed.lib.misc import seed_hash, split_dataset
from domainbed_itl.deployment.candidates import Candidate
from domainbed_itl.deployment.records import Record
from domainbed_itl.meta import data as meta_data
from domainbed_itl.meta.base_model import accuracy, init_mlp
from domainbed_itl.meta.inner import LossFn, sample_batches, train_on_batches
from domainbed_itl.meta.splits import MetaConfig

# Measured on RotatedMNIST, test env 0, trial seed 0 (README, "Deploying on unseen domains").
DEFAULT_STEPS = 32_000
DEFAULT_LR = 0.1
# DomainBed's default --holdout_fraction: the share of each source domain held out.
HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class MLPProtocol:
    """The settings of an MLP deployment; `seed` is the dataset seed (as in meta_train and
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


def mlp_record(dataset: str, job: Job, protocol: MLPProtocol, scores: Scores,
               seconds: float) -> Record:
    c = job.candidate
    return Record("mlp", dataset, job.test_env, job.trial_seed, c.label, c.algorithm,
                  c.hparams, c.meta, protocol.steps, protocol.settings(), scores.test_acc,
                  scores.source_acc, seconds)
