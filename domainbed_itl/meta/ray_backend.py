"""Meta-learning across workers: the independent pieces of one outer step (the leave-one-domain-out
inner trainings of `meta_train`, the candidates of one CMA-ES generation) as parallel Ray tasks.

Each piece is a pure function of its arguments (every split draws from its own generator seeded
by (seed, step, held-out domain), see `meta.splits`), so running it in another process gives the
same numbers as running it here, and the driver gathers the results in a fixed order: the
learned w equals the sequential run's up to float rounding. The domains are put into Ray's
object store once per run and shared by every task. A task whose worker dies (a killed process,
a lost node) is run again by Ray (`max_retries`); a task that raises is not, since it would
raise again. The driver keeps checkpointing after every outer step as it does without Ray, so a
killed driver resumes from its checkpoint.

Ray runs here on CPUs: the data and results travel as CPU tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from domainbed.launchers import SettingError
from domainbed.launchers.ray_connection import connect, start_local
from domainbed_itl.meta.families import LossFamily
from domainbed_itl.meta.outer import DomainSet, MetaConfig, SplitResult, Starts, run_split

# A local instance small enough for a shared 2-core machine.
LOCAL_CPUS = 2
LOCAL_OBJECT_STORE_BYTES = 100 * 2**20
MAX_RETRIES = 3
_NEEDED_BY = "--backend ray"


class RayUnavailableError(ValueError):
    """Ray cannot be used as asked; the message says what to do instead."""


class RayBackend:
    """A connection to Ray (a running cluster at `address`, else a small instance started
    here) that maps a function over argument tuples as retried tasks."""

    def __init__(self, address: str | None = None, max_retries: int = MAX_RETRIES) -> None:
        """Connect under the rule the `ray` launcher follows (`launchers.ray_connection`)."""
        self.max_retries = max_retries
        self._remote: dict[Callable[..., Any], Any] = {}
        self._shared: dict[int, tuple[Any, Any]] = {}
        try:
            if address is not None:
                connect(address, "--ray_address", _NEEDED_BY)
                self.started = False
            else:
                self.started = start_local(_NEEDED_BY, LOCAL_CPUS, 0, LOCAL_OBJECT_STORE_BYTES)
        except SettingError as err:
            raise RayUnavailableError(str(err)) from None

    def share(self, obj: Any) -> Any:
        """`obj` in the object store (put once, then the same reference)."""
        key = id(obj)
        if key not in self._shared:
            import ray

            self._shared[key] = (obj, ray.put(obj))
        return self._shared[key][1]

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """[fn(*args) for args in calls], each call a Ray task (object references among the
        arguments arrive as their values); results in the order of `calls`."""
        import ray

        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn).options(num_cpus=1, max_retries=self.max_retries,
                                                      retry_exceptions=False)
        task = self._remote[fn]
        return ray.get([task.remote(*args) for args in calls])

    def close(self) -> None:
        """Shut down the instance this backend started (a cluster it joined keeps running)."""
        import ray

        self._shared.clear()
        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False


class RaySplitRunner:
    """A `meta.outer.SplitRunner` running every split of a step as its own Ray task. `task`
    (default `outer.run_split`) is what a task calls, with run_split's arguments."""

    def __init__(self, backend: RayBackend, task: Callable[..., SplitResult] = run_split) -> None:
        self.backend, self.task = backend, task

    def __call__(self, data: DomainSet, w: torch.Tensor, family: LossFamily, cfg: MetaConfig,
                 step: int, compute_hypergrad: bool, starts: Starts | None
                 ) -> list[SplitResult]:
        if data.x.device.type != "cpu":
            raise ValueError("Ray tasks run on CPUs here: keep the domains on the CPU")
        shared = self.backend.share(data)
        calls = [(shared, d, w.detach().cpu(), family, cfg, step, compute_hypergrad,
                  None if starts is None else starts[d])
                 for d in range(data.n_domains)]
        return self.backend.map(self.task, calls)
