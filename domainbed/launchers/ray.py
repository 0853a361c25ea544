"""The `ray` launcher: each job of a sweep is one Ray task, on a running Ray cluster or on a Ray
instance started here for the sweep.

Settings (environment variables, so that every sweep script takes them unchanged):

    DOMAINBED_RAY_ADDRESS       the cluster to use, as `ray start --head` prints it (host:port,
                                ray://host:port or auto); Ray's own RAY_ADDRESS is read when
                                this is unset. Unset both to start a Ray instance here. Ray's
                                own settings apply too: a cluster started with token
                                authentication needs RAY_AUTH_MODE=token and its token.
    DOMAINBED_RAY_CPUS_PER_JOB  CPUs Ray reserves for each job (default 1)
    DOMAINBED_RAY_GPUS_PER_JOB  GPUs per job (default 1 where the cluster has GPUs, else 0)
    DOMAINBED_RAY_NUM_CPUS      CPUs of a Ray instance started here (default: all of them)
    DOMAINBED_RAY_OBJECT_STORE_MB  its object store (default 256: jobs pass no data through it)
    DOMAINBED_RAY_MAX_RETRIES   reruns of a job whose worker or node died (default 3); a rerun
                                carries on from the job's last checkpoint

A job runs its shell command in the driver's working directory with the driver's Python, so
the nodes of a multi-node cluster must see the same paths (a shared file system). As with the
`local` launcher, a job's stdout is dropped (the training script keeps its own log), its
stderr's tail is shown if it fails, and Ctrl-C, SIGTERM or SIGHUP cancel the tasks, whose
jobs' processes are stopped before the launcher returns.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tqdm

from domainbed.launchers.launcher import (
    Outcome,
    SettingError,
    register_launcher,
    report,
    visible_gpus,
)
from domainbed.launchers.processes import (
    run_shell,
    stop_on_termination,
    tail_lines,
    tail_of_handle,
)
from domainbed.launchers.ray_connection import connect, import_ray, start_local
from domainbed.launchers.settings import env_number

ADDRESS_ENV = "DOMAINBED_RAY_ADDRESS"
_NEEDED_BY = "the ray launcher"
_WAIT_S = 1.0
_CANCEL_WAIT_S = 30.0


@dataclass(frozen=True)
class RaySettings:
    address: str | None
    cpus_per_job: float
    gpus_per_job: float | None  # None: decided from the cluster's GPUs
    num_cpus: int
    object_store_mb: int
    max_retries: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RaySettings:
        address = (environ.get(ADDRESS_ENV) or environ.get("RAY_ADDRESS") or "").strip()
        return cls(
            address=address or None,
            cpus_per_job=env_number(environ, "DOMAINBED_RAY_CPUS_PER_JOB", 1.0, float, 0),
            gpus_per_job=env_number(environ, "DOMAINBED_RAY_GPUS_PER_JOB", None, float, 0),
            num_cpus=env_number(environ, "DOMAINBED_RAY_NUM_CPUS", os.cpu_count() or 1, int, 1),
            object_store_mb=env_number(environ, "DOMAINBED_RAY_OBJECT_STORE_MB", 256, int, 80),
            max_retries=env_number(environ, "DOMAINBED_RAY_MAX_RETRIES", 3, int, 0),
        )


def run_job(command: str, cwd: str) -> tuple[int, list[str]]:
    """The body of one Ray task: (exit status, tail of stderr) of the job's shell command."""
    with tempfile.TemporaryFile() as stderr:
        returncode = run_shell(command, cwd, subprocess.DEVNULL, stderr)
        return returncode, tail_of_handle(stderr)


def _connect(settings: RaySettings) -> bool:
    """Connect to the cluster, or start a Ray instance here; True if this call started it."""
    if settings.address is not None:
        connect(settings.address, ADDRESS_ENV, _NEEDED_BY)
        return False
    return start_local(_NEEDED_BY, settings.num_cpus, len(visible_gpus()),
                       settings.object_store_mb * 2**20)


def _job_resources(settings: RaySettings, nodes: list[dict[str, float]]) -> dict[str, float]:
    """Per-job CPUs and GPUs, refused if no node could ever run such a job."""
    gpus = settings.gpus_per_job
    if gpus is None:
        gpus = 1.0 if any(node.get("GPU", 0) > 0 for node in nodes) else 0.0
    wanted = {"CPU": settings.cpus_per_job, "GPU": gpus}
    if not any(all(node.get(k, 0) >= v for k, v in wanted.items()) for node in nodes):
        largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
        raise SettingError(
            f"no Ray node has {wanted['CPU']:g} CPUs and {wanted['GPU']:g} GPUs for a job (the "
            f"largest has {largest.get('CPU', 0):g} and {largest.get('GPU', 0):g}): lower "
            "DOMAINBED_RAY_CPUS_PER_JOB or DOMAINBED_RAY_GPUS_PER_JOB"
        )
    return wanted


def _node_capacities(settings: RaySettings) -> list[dict[str, float]]:
    ray = import_ray(_NEEDED_BY)
    if ray.is_initialized():
        return [node["Resources"] for node in ray.nodes() if node["Alive"]]
    return [{"CPU": float(settings.num_cpus), "GPU": float(len(visible_gpus()))}]


def check_ray() -> None:
    """Refuse bad settings, a missing Ray, or a cluster address nobody answers at.

    A given cluster is connected to here, before the sweep creates any job directory, and the
    launcher then uses that connection; a local instance is only started by the launcher.
    """
    settings = RaySettings.from_env()
    import_ray(_NEEDED_BY)
    if settings.address is not None:
        _connect(settings)
    _job_resources(settings, _node_capacities(settings))


def _outcome(ray: Any, ref: Any, command: str) -> Outcome:
    try:
        returncode, stderr_tail = ray.get(ref)
    except ray.exceptions.RayError as err:
        return Outcome(command, f"Ray task failed ({type(err).__name__})", tail_lines(str(err)))
    if returncode != 0:
        return Outcome(command, f"exit status {returncode}", stderr_tail)
    return Outcome(command)


def _cancel(ray: Any, in_flight: dict[Any, str]) -> None:
    """Cancel the tasks and wait for them: each stops its job's processes as it goes."""
    for ref in in_flight:
        ray.cancel(ref)
    ray.wait(list(in_flight), num_returns=len(in_flight), timeout=_CANCEL_WAIT_S)


@register_launcher("ray", check=check_ray, max_parallel=True)
def ray_launcher(commands: Sequence[str], max_parallel: int | None = None) -> list[str]:
    """Run the commands as Ray tasks, at most `max_parallel` at once if given (else as many as
    the cluster's resources allow); the commands that failed."""
    settings = RaySettings.from_env()
    started_here = _connect(settings)
    ray = import_ray(_NEEDED_BY)
    try:
        resources = _job_resources(settings, _node_capacities(settings))
        task = ray.remote(run_job).options(
            num_cpus=resources["CPU"],
            num_gpus=resources["GPU"],
            max_retries=settings.max_retries,
        )
        return _run(ray, task, commands, max_parallel or len(commands))
    finally:
        if started_here:
            ray.shutdown()


def _run(ray: Any, task: Any, commands: Sequence[str], max_parallel: int) -> list[str]:
    cwd = os.getcwd()
    pending = list(reversed(commands))
    in_flight: dict[Any, str] = {}
    outcomes: list[Outcome] = []
    progress = tqdm.tqdm(total=len(commands), desc="jobs", unit="job", ncols=80)
    try:
        with stop_on_termination():
            while pending or in_flight:
                while pending and len(in_flight) < max_parallel:
                    command = pending.pop()
                    in_flight[task.remote(command, cwd)] = command
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=_WAIT_S)
                for ref in ready:
                    outcomes.append(_outcome(ray, ref, in_flight.pop(ref)))
                    failed = sum(outcome.failure is not None for outcome in outcomes)
                    if failed:
                        progress.set_postfix(failed=failed)
                    progress.update(1)
    except BaseException:
        _cancel(ray, in_flight)
        raise
    finally:
        progress.close()
    return report(outcomes)
