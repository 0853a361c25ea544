"""Launchers that hand a sweep's jobs to a cluster scheduler instead of running them here.

Importing this package registers them in `domainbed.command_launchers.REGISTRY`: `slurm`
(job arrays through submitit) and `ray` (one Ray task per job). Neither imports its scheduler's
client library until it is used, so both stay listed where submitit or Ray is not installed;
their checks then say what to install.
"""

from domainbed.launchers import ray, slurm  # noqa: F401  (registers the launchers)
