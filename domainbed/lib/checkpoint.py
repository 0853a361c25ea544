"""Everything a killed training run needs to carry on as if it had never stopped.

A resume state holds the algorithm's parameters and buffers, the state of every optimiser and
learning-rate scheduler it keeps as an attribute, the position of each minibatch stream, the
Python / NumPy / torch random generators, the next step and the result records written so far.
Restoring all of it makes a resumed run on the same machine repeat the uninterrupted run bit
for bit. An algorithm with plain-Python counters must expose them through
`nn.Module.get_extra_state` / `set_extra_state` (or keep them in buffers) to be resumed exactly.

The state is saved and loaded as every resume state of the project is (`run_dir.save_state`,
`run_dir.load_state`: atomically, and with `weights_only=True`, so a resume file cannot run
code). A file that does not load, or does not fit the run it should resume, is refused with an
`UnreadableState` before the run changes anything.
"""

from __future__ import annotations

import os
import random
from typing import Any, Protocol

import numpy as np
import torch

from domainbed.lib import run_dir
from domainbed.lib.cli import UsageError
from domainbed.lib.run_dir import RESUME as RESUME_FILE

# What `capture` stores, with the type each field must have.
_FIELDS: dict[str, type] = {"args": dict, "next_step": int, "records": list, "algorithm": dict,
                            "optimisers": dict, "loaders": list, "rng": dict}


class UnreadableState(UsageError, ValueError):
    """A resume state that is damaged or belongs to another run; the message says what to do."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path} {reason}; delete it to start this run over")


class Resumable(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _optimisers(algorithm: torch.nn.Module) -> dict[str, Resumable]:
    """The optimisers and schedulers an algorithm holds as attributes, by attribute name."""
    kinds = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
    return {name: value for name, value in sorted(vars(algorithm).items())
            if isinstance(value, kinds)}


def _rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture(algorithm: torch.nn.Module, loaders: list[Resumable], next_step: int,
            records: list[str], args: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of the run, taken between two steps; `records` are results.jsonl's lines."""
    return {
        "args": args,
        "next_step": next_step,
        "records": records,
        "algorithm": algorithm.state_dict(),
        "optimisers": {name: opt.state_dict() for name, opt in _optimisers(algorithm).items()},
        "loaders": [loader.state_dict() for loader in loaders],
        "rng": _rng_state(),
    }


def restore(state: dict[str, Any], algorithm: torch.nn.Module, loaders: list[Resumable],
            output_dir: str) -> None:
    """Put a freshly built run (same arguments) back where `capture` found the old one; raise
    UnreadableState if the state does not fit it."""
    try:
        _restore(state, algorithm, loaders)
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as err:
        reason = " ".join(str(err).split())[:200]
        raise UnreadableState(os.path.join(output_dir, RESUME_FILE),
                              f"does not fit this run ({reason})") from err


def _restore(state: dict[str, Any], algorithm: torch.nn.Module, loaders: list[Resumable]) -> None:
    algorithm.load_state_dict(state["algorithm"])
    optimisers = _optimisers(algorithm)
    if set(optimisers) != set(state["optimisers"]):
        raise ValueError(
            f"the resume state has optimisers {sorted(state['optimisers'])}, "
            f"the algorithm has {sorted(optimisers)}")
    for name, optimiser in optimisers.items():
        optimiser.load_state_dict(state["optimisers"][name])
    if len(loaders) != len(state["loaders"]):
        raise ValueError(f"the resume state has {len(state['loaders'])} minibatch streams, "
                         f"the run has {len(loaders)}")
    for loader, loader_state in zip(loaders, state["loaders"], strict=True):
        loader.load_state_dict(loader_state)
    _set_rng_state(state["rng"])


def save(state: dict[str, Any], output_dir: str) -> None:
    run_dir.save_state(state, os.path.join(output_dir, RESUME_FILE))


def load(output_dir: str) -> dict[str, Any] | None:
    """The resume state in `output_dir`, or None when there is none; UnreadableState when the
    file is damaged."""
    path = os.path.join(output_dir, RESUME_FILE)
    try:
        state = run_dir.load_state(path)
    except run_dir.UnreadableStateFile as err:
        raise UnreadableState(path, f"cannot be read ({err.reason})") from err
    if state is None:
        return None
    if not isinstance(state, dict):
        raise UnreadableState(path, "is not a resume state")
    for field, kind in _FIELDS.items():
        if not isinstance(state.get(field), kind):
            raise UnreadableState(path, f"is not a resume state (no valid {field!r})")
    if not all(isinstance(record, str) for record in state["records"]):
        raise UnreadableState(path, "is not a resume state (its records are not text)")
    return state


def discard(output_dir: str) -> None:
    """Remove the resume state of a finished run (it can be as large as the model twice over)."""
    path = os.path.join(output_dir, RESUME_FILE)
    if os.path.exists(path):
        os.remove(path)
