"""The CMA-ES search as plain JSON, and its exact reconstruction by replay.

A results directory is shared and writable by others, so its state file must be data, never
code: no pickle. pycma's optimizer object cannot be saved any other way, so what is stored is
what rebuilds it: the generations' candidates and fitness values. Resuming re-creates the
optimizer from its seed, asks it for each recorded generation (checking that it proposes exactly
the recorded candidates) and tells it the recorded fitness values. The optimizer draws from its
own random stream, so the replayed optimizer, random state included, is the one an
uninterrupted run would hold, and the next generation is the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cma
import numpy as np

from domainbed.lib.cli import UsageError

FORMAT = "domainbed_itl.meta.cmaes/1"


class StateError(UsageError, ValueError):
    """A state file that cannot be used; the message says what to do instead."""


@dataclass(frozen=True)
class Generation:
    """One generation as the optimizer saw it: its candidates and their fitness values, plus
    each candidate's mean held-out accuracy (None if its inner loops diverged)."""

    candidates: list[list[float]]
    fitness: list[float]
    held_out_acc: list[float | None]

    def to_json(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "fitness": self.fitness,
                "held_out_acc": self.held_out_acc}


@dataclass
class SearchState:
    """Everything a resumed search needs: the settings it must share, the generations and the
    log records (which carry the timings)."""

    config: dict[str, Any]
    generations: list[Generation] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def best(self) -> tuple[float, list[float], float | None] | None:
        """(fitness, w, held-out accuracy) of the first candidate with the lowest fitness."""
        best = None
        for gen in self.generations:
            for f, w, acc in zip(gen.fitness, gen.candidates, gen.held_out_acc, strict=True):
                if best is None or f < best[0]:
                    best = (f, w, acc)
        return best

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "config": self.config,
                           "generations": [g.to_json() for g in self.generations],
                           "records": self.records}) + "\n"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _generation(obj: Any, n_params: int) -> Generation:
    if not isinstance(obj, dict):
        raise TypeError("a generation is not an object")
    cands, fitness, accs = obj.get("candidates"), obj.get("fitness"), obj.get("held_out_acc")
    if not (isinstance(cands, list) and isinstance(fitness, list) and isinstance(accs, list)
            and cands and len(cands) == len(fitness) == len(accs)):
        raise TypeError("a generation's candidates, fitness and held_out_acc do not match")
    for w in cands:
        if not (isinstance(w, list) and len(w) == n_params
                and all(_number(v) and math.isfinite(v) for v in w)):
            raise TypeError(f"a candidate is not {n_params} finite numbers")
    if not all(_number(f) for f in fitness) or not all(a is None or _number(a) for a in accs):
        raise TypeError("a fitness or accuracy value is not a number")
    return Generation([[float(v) for v in w] for w in cands], [float(f) for f in fitness],
                      [None if a is None else float(a) for a in accs])


def read_state(path: Path, n_params: int) -> SearchState | None:
    """The search saved at `path`, None if there is none; StateError if it does not parse."""
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise TypeError(f"no 'format': {FORMAT!r}")
        if not isinstance(obj.get("config"), dict) or not isinstance(obj.get("records"), list):
            raise TypeError("no config or records")
        generations = [_generation(g, n_params) for g in obj.get("generations", [])]
        if len(generations) != len(obj["records"]):
            raise TypeError("as many records as generations expected")
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise StateError(f"{path} is not a CMA-ES state this program wrote ({err}); delete the "
                         "output directory to start over, or choose a new --output_dir") from None
    return SearchState(obj["config"], generations, obj["records"])


def replay(make: Callable[[], cma.CMAEvolutionStrategy],
           generations: list[Generation]) -> cma.CMAEvolutionStrategy:
    """A fresh optimizer from `make`, brought to where the recorded generations left it."""
    es = make()
    for k, gen in enumerate(generations):
        asked = es.ask()
        if len(asked) != len(gen.candidates) or not all(
                np.array_equal(a, np.asarray(c))
                for a, c in zip(asked, gen.candidates, strict=True)):
            raise StateError(f"replaying generation {k} proposes other candidates than the "
                             "saved ones (another pycma or numpy version?); finish the search "
                             "with the versions that started it, or choose a new --output_dir")
        es.tell(asked, gen.fitness)
    return es
