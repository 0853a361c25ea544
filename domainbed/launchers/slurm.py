"""The `slurm` launcher: a sweep's jobs go to Slurm as job arrays through submitit.

Settings (environment variables, so that every sweep script takes them unchanged):

    DOMAINBED_SLURM_PARTITION     partition (default: the cluster's default partition)
    DOMAINBED_SLURM_TIME          time limit of one job, in minutes (default 1440)
    DOMAINBED_SLURM_GPUS          GPUs per job (default 1 where the partition has GPUs, else 0)
    DOMAINBED_SLURM_CPUS          CPUs per job (default 4)
    DOMAINBED_SLURM_MEM           memory per job, as sbatch --mem takes it, e.g. 32G
                                  (default: the partition's default)
    DOMAINBED_SLURM_ARRAY_PARALLELISM  jobs of one array running at once (default 256; the
                                  sweep's --max_parallel overrides it)
    DOMAINBED_SLURM_ARRAY_SIZE    jobs per array; a larger sweep is several arrays (default 1000)
    DOMAINBED_SLURM_SBATCH        more sbatch options, e.g. "--account=lab --qos=high"
    DOMAINBED_SLURM_MAX_TIMEOUTS  requeues of a job that reaches its time limit (default 10)
    DOMAINBED_SLURM_NO_WAIT       1: return once the jobs are submitted (default 0: wait)
    DOMAINBED_SLURM_POLL_S        seconds between two looks at the queue (default 5)

submitit's files (submission scripts, one log per job) and `jobs.tsv` (Slurm job id and job
directory of every submitted job) go to `<sweep directory>/.slurm`, a hidden directory that
result readers skip.

Preemption and time limits: Slurm signals a job (USR2) before it stops it; submitit then
requeues the job, which restarts the same training command, and the training script carries
on from its last checkpoint (`resume.pt`). A job that Slurm itself requeues (preemption with
PreemptMode=REQUEUE, `scontrol requeue`) resumes the same way. A finished job is never run
again: the sweep launches only jobs whose directory has no `done`, and this launcher skips any
job whose directory still has a Slurm job queued or running. A run that Slurm stops leaves its
failure in the job's result file; the report names it only if no later run followed, and
otherwise says the job ended without a result (Slurm could not start it again, say).
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import tqdm

from domainbed.launchers.launcher import (
    Outcome,
    SettingError,
    output_dir_of,
    register_launcher,
    report,
)
from domainbed.launchers.processes import run_shell, stop_on_termination, tail_of_file
from domainbed.launchers.settings import env_flag, env_number

LOG_DIR_NAME = ".slurm"
JOBS_RECORD = "jobs.tsv"
JOB_NAME = "domainbed"

# Slurm states after which a job will not run again by itself; any other state is waiting,
# running or on its way back to the queue. PREEMPTED is left out: a job preempted to be
# requeued must not count as ended (one preempted for good ends once Slurm forgets it).
_ENDED_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
}
# Looks at the queue before a job absent from it, or ended without a result file, counts as
# ended.
_MISSING_LOOKS = 2


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None
    time_min: int
    gpus: int | None  # None: decided from the partition's GPUs
    cpus: int
    mem: str | None
    array_parallelism: int
    array_size: int
    sbatch: dict[str, Any]
    max_timeouts: int
    no_wait: bool
    poll_s: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SlurmSettings:
        mem = environ.get("DOMAINBED_SLURM_MEM", "").strip() or None
        if mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", mem, re.IGNORECASE):
            raise SettingError(f"DOMAINBED_SLURM_MEM must be a size such as 32G, got {mem!r}")
        return cls(
            partition=environ.get("DOMAINBED_SLURM_PARTITION", "").strip() or None,
            time_min=env_number(environ, "DOMAINBED_SLURM_TIME", 1440, int, 1),
            gpus=env_number(environ, "DOMAINBED_SLURM_GPUS", None, int, 0),
            cpus=env_number(environ, "DOMAINBED_SLURM_CPUS", 4, int, 1),
            mem=mem,
            array_parallelism=env_number(
                environ, "DOMAINBED_SLURM_ARRAY_PARALLELISM", 256, int, 1),
            array_size=env_number(environ, "DOMAINBED_SLURM_ARRAY_SIZE", 1000, int, 1),
            sbatch=parse_sbatch_options(environ.get("DOMAINBED_SLURM_SBATCH", "")),
            max_timeouts=env_number(environ, "DOMAINBED_SLURM_MAX_TIMEOUTS", 10, int, 0),
            no_wait=env_flag(environ, "DOMAINBED_SLURM_NO_WAIT"),
            poll_s=env_number(environ, "DOMAINBED_SLURM_POLL_S", 5.0, float, 0.1),
        )


def parse_sbatch_options(text: str) -> dict[str, Any]:
    """`--name=value` and `--flag` words as submitit's additional sbatch parameters."""
    options: dict[str, Any] = {}
    for word in shlex.split(text):
        match = re.fullmatch(r"--([A-Za-z][\w-]*)(?:=(.*))?", word, re.DOTALL)
        if match is None:
            raise SettingError(
                f"DOMAINBED_SLURM_SBATCH takes long options as --name=value or --flag, "
                f"got {word!r}")
        options[match.group(1)] = True if match.group(2) is None else match.group(2)
    return options


class JobFailed(RuntimeError):
    """The job's command exited non-zero: raised so that Slurm records the job as FAILED.

    The message names the run (1 for the first, one more after each requeue), so that the
    launcher can tell a failure of the job's last run from one left behind by a run that Slurm
    stopped and requeued.
    """


def _this_run() -> int:
    """Which run of its Slurm job this is: 1, plus one for each time Slurm requeued the job."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) + 1


@dataclass(frozen=True)
class ShellJob:
    """One sweep job as submitit runs it on a node: its shell command, in the submitter's
    working directory, logging to the job's Slurm log."""

    command: str
    cwd: str

    def __call__(self) -> None:
        returncode = run_shell(self.command, self.cwd, None, None)
        if returncode != 0:
            raise JobFailed(f"exit status {returncode} in run {_this_run()}")

    def checkpoint(self) -> Any:
        """Called by submitit on preemption or time-out: requeue the same command, which
        resumes from the checkpoint the training script keeps."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise SettingError(
            "the slurm launcher needs submitit: pip install 'domainbed-itl[cluster]'"
        ) from None
    return submitit


def _slurm_query(*args: str) -> str:
    """The output of a Slurm client command; SettingError naming what failed otherwise."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SettingError(
            f"no Slurm here ({args[0]} not found): run the sweep where Slurm's commands are, "
            "or start a one-node cluster with tools/slurm_local.sh up"
        ) from None
    except subprocess.TimeoutExpired:
        raise SettingError(f"Slurm did not answer `{' '.join(args)}` within 60 s") from None
    if done.returncode != 0:
        message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise SettingError(f"`{' '.join(args)}` failed: {message}")
    return done.stdout


def gpus_in_gres(gres: str) -> int:
    """GPUs in one node's generic resources as sinfo prints them: `gpu:4`, `gpu:a100:4(S:0-1)`,
    `gpu:2,mps:100`; 0 for `(null)`."""
    count = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        name, *rest = item.split(":")
        if name == "gpu":
            count += int(rest[-1]) if rest and rest[-1].isdigit() else 1
    return count


def _partition_gpus(partition: str | None) -> int:
    """GPUs on the partition's best-equipped node, 0 if none has any."""
    where = ["-p", partition] if partition else []
    lines = _slurm_query("sinfo", "-h", *where, "-o", "%G").split()
    return max((gpus_in_gres(line) for line in lines), default=0)


def _resolved_gpus(settings: SlurmSettings) -> int:
    """GPUs per job: as set, else one where the partition has GPUs and none where it has not."""
    if settings.gpus is not None:
        return settings.gpus
    return min(1, _partition_gpus(settings.partition))


def check_slurm() -> None:
    """Refuse bad settings, a missing submitit or Slurm, or a partition the cluster lacks,
    before the sweep creates any job directory."""
    settings = SlurmSettings.from_env()
    _import_submitit()
    partitions = [p.rstrip("*") for p in _slurm_query("sinfo", "-h", "-o", "%P").split()]
    if settings.partition is not None and settings.partition not in partitions:
        raise SettingError(
            f"unknown Slurm partition {settings.partition!r}: set DOMAINBED_SLURM_PARTITION to "
            f"one of {', '.join(partitions) or '(none: the cluster has no partition)'}"
        )
    if settings.gpus and not _partition_gpus(settings.partition):
        where = f"partition {settings.partition!r}" if settings.partition else "the partition"
        raise SettingError(f"{where} has no GPUs: set DOMAINBED_SLURM_GPUS=0 or choose "
                           "another DOMAINBED_SLURM_PARTITION")


def _executor(settings: SlurmSettings, folder: Path, parallelism: int) -> Any:
    submitit = _import_submitit()
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_timeouts)
    parameters: dict[str, Any] = {
        "job_name": JOB_NAME,
        "time": settings.time_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": settings.cpus,
        "array_parallelism": parallelism,
        "additional_parameters": dict(settings.sbatch),
    }
    gpus = _resolved_gpus(settings)
    if gpus:
        parameters["gres"] = f"gpu:{gpus}"
    if settings.partition:
        parameters["partition"] = settings.partition
    if settings.mem:
        parameters["mem"] = settings.mem
    executor.update_parameters(**parameters)
    return executor


@dataclass
class _Submitted:
    command: str
    job: Any  # submitit.SlurmJob
    missing_looks: int = 0


@dataclass
class _Record:
    """`jobs.tsv`: the Slurm job id and job directory of every job this sweep submitted."""

    path: Path

    def append(self, submitted: Sequence[_Submitted]) -> None:
        with open(self.path, "a") as handle:
            for entry in submitted:
                handle.write(f"{entry.job.job_id}\t{output_dir_of(entry.command) or '-'}\n")

    def dirs_still_queued(self) -> set[str]:
        """Job directories whose recorded Slurm job is still queued or running."""
        if not self.path.exists():
            return set()
        states = queue_states()
        busy = set()
        for line in self.path.read_text().splitlines():
            job_id, _, job_dir = line.partition("\t")
            if job_id in states and states[job_id].state not in _ENDED_STATES:
                busy.add(job_dir)
        return busy


class QueueState(NamedTuple):
    """A job as squeue shows it: its state, and how often Slurm has requeued it."""

    state: str
    requeues: int


def queue_states() -> dict[str, QueueState]:
    """Every job of this user the controller still knows, one per array task, finished ones
    included (kept for MinJobAge)."""
    output = _slurm_query("squeue", "-h", "-r", "--states=all", "-u", getpass.getuser(),
                          "-O", "JobArrayID:64,State:32,RestartCnt:16")
    states = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2].isdigit():
            states[fields[0]] = QueueState(fields[1], int(fields[2]))
    return states


def _submit(commands: Sequence[str], settings: SlurmSettings, folder: Path,
            parallelism: int) -> list[_Submitted]:
    executor = _executor(settings, folder, parallelism)
    record = _Record(folder / JOBS_RECORD)
    cwd = os.getcwd()
    submitted: list[_Submitted] = []
    for start in range(0, len(commands), settings.array_size):
        chunk = commands[start:start + settings.array_size]
        with executor.batch():
            jobs = [executor.submit(ShellJob(command, cwd)) for command in chunk]
        entries = [_Submitted(command, job) for command, job in zip(chunk, jobs, strict=True)]
        record.append(entries)
        submitted.extend(entries)
    arrays = sorted({entry.job.job_id.split("_")[0] for entry in submitted}, key=int)
    print(f"Submitted {len(submitted)} jobs to Slurm (job {', '.join(arrays)}); "
          f"logs and job ids in {folder}")
    return submitted


class _Failure(NamedTuple):
    how: str
    run: int | None  # which run of the job failed, where the job itself reported it


def _failure_of(entry: _Submitted) -> _Failure | None:
    """None if the job's command succeeded, else how it failed, from its result file."""
    try:
        entry.job.result()
    except Exception as err:  # submitit re-raises what the job raised, as text
        found = re.search(r"JobFailed: (exit status -?\d+) in run (\d+)", str(err))
        if found:
            return _Failure(found.group(1), int(found.group(2)))
        lines = [line for line in str(err).splitlines() if line.strip()]
        return _Failure(f"failed in submitit ({lines[0] if lines else type(err).__name__})",
                        None)
    return None


def _finished(entry: _Submitted, states: Mapping[str, QueueState]) -> Outcome | None:
    """The job's outcome once Slurm says it will not run again, else None.

    Slurm's word comes first: a requeued job may hold the result file of the run that was
    stopped, and that result stands only once no later run is coming. A failure reported by
    a run that Slurm then requeued is not the job's: its last run ended without a result
    (Slurm could not start it again, say, or it was cancelled while queued).
    """
    job = entry.job
    queued = states.get(job.job_id)
    state = queued.state if queued is not None else None
    if state is not None and state not in _ENDED_STATES:
        entry.missing_looks = 0
        return None
    if not job.paths.result_pickle.exists() or state is None:
        # Gone from the queue, or ended without a result yet: look again, in case the queue
        # and the shared file system disagree for a moment.
        entry.missing_looks += 1
        if entry.missing_looks < _MISSING_LOOKS:
            return None
    if not job.paths.result_pickle.exists():
        how = state or "no longer known to Slurm"
        return Outcome(entry.command, f"ended without a result ({how})",
                       tail_of_file(job.paths.stderr))
    failure = _failure_of(entry)
    if failure is None:
        return Outcome(entry.command)
    if queued is not None and failure.run is not None and failure.run <= queued.requeues:
        requeues = f"{queued.requeues} requeue{'s' if queued.requeues > 1 else ''}"
        return Outcome(entry.command,
                       f"ended without a result ({state} after {requeues}; run {failure.run} "
                       f"had {failure.how})",
                       tail_of_file(job.paths.stderr))
    how = failure.how
    if state not in (None, "COMPLETED", "FAILED"):
        how = f"{how} ({state})"
    return Outcome(entry.command, how, tail_of_file(job.paths.stderr))


def _wait(submitted: list[_Submitted], poll_s: float) -> list[Outcome]:
    outcomes: list[Outcome] = []
    waiting = list(submitted)
    progress = tqdm.tqdm(total=len(submitted), desc="jobs", unit="job", ncols=80)
    try:
        while waiting:
            time.sleep(poll_s)
            try:
                states = queue_states()
            except SettingError as err:  # the controller restarting, say: look again later
                progress.write(f"slurm launcher: {err}; retrying")
                continue
            for entry in list(waiting):
                outcome = _finished(entry, states)
                if outcome is None:
                    continue
                waiting.remove(entry)
                outcomes.append(outcome)
                failed = sum(o.failure is not None for o in outcomes)
                if failed:
                    progress.set_postfix(failed=failed)
                progress.update(1)
    finally:
        progress.close()
    return outcomes


def _cancel(submitted: Sequence[_Submitted]) -> None:
    job_ids = [entry.job.job_id for entry in submitted]
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)
        print(f"Cancelled {len(job_ids)} Slurm jobs.", file=sys.stderr)


def sweep_dir_of(commands: Sequence[str]) -> str | None:
    """The directory holding every command's `--output_dir`; None if they do not share one."""
    parents = {os.path.dirname(os.path.abspath(d)) for d in map(output_dir_of, commands) if d}
    return parents.pop() if len(parents) == 1 else None


def log_dir_for(commands: Sequence[str]) -> Path:
    """`<sweep dir>/.slurm`, or `./.slurm` for commands that are not one sweep's."""
    return Path(sweep_dir_of(commands) or os.getcwd()) / LOG_DIR_NAME


@register_launcher("slurm", check=check_slurm, max_parallel=True, no_wait=True)
def slurm_launcher(commands: Sequence[str], max_parallel: int | None = None,
                   no_wait: bool = False) -> list[str] | None:
    """Submit the commands as Slurm job arrays, then wait for them with a progress bar and
    return the ones that failed; with `no_wait` (the sweep's --no_wait) or
    DOMAINBED_SLURM_NO_WAIT=1 return None once submitted.

    Ctrl-C, SIGTERM or SIGHUP while waiting cancel the submitted jobs, as the `local` launcher
    stops its own; without waiting, nothing waits and the jobs are Slurm's.
    """
    check_slurm()
    settings = SlurmSettings.from_env()
    if no_wait:
        settings = replace(settings, no_wait=True)
    folder = log_dir_for(commands)
    folder.mkdir(parents=True, exist_ok=True)
    busy = _Record(folder / JOBS_RECORD).dirs_still_queued()
    queued = [c for c in commands if output_dir_of(c) in busy]
    if queued:
        print(f"{len(queued)} jobs still have a Slurm job queued or running; not submitted "
              "again (see squeue).")
        commands = [c for c in commands if output_dir_of(c) not in busy]
    if not commands:
        return None if settings.no_wait else []
    submitted: list[_Submitted] = []
    with stop_on_termination():
        try:
            submitted = _submit(commands, settings, folder,
                                max_parallel or settings.array_parallelism)
            if settings.no_wait:
                print(f"Not waiting: see squeue -n {JOB_NAME}; "
                      "launch the sweep again later to see what is done.")
                return None
            outcomes = _wait(submitted, settings.poll_s)
        except BaseException:
            _cancel(submitted)
            raise
    return report(outcomes)
