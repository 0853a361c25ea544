"""A learned loss as one value: its family, its order and its parameters, from meta-training to
deployment.

Meta-training (`domainbed_itl.scripts.meta_train`, `.meta_cmaes`) writes it as
`learned_loss.json`; the comparisons (`domainbed_itl.scripts.compare_losses`, `.deploy`), the
plots and `--init` read it back. The file is the flat hyperparameter object that deploys it,
exactly what `domainbed.scripts.train --hparams` takes, so a user can paste it there unchanged:

    Taylor (order k):  {"itl_omega": [w0, w1, ...], "itl_order": k}   ("itl_order" omitted at 4)
    iSCE:              {"isce_alpha": a, "isce_beta": b}

The family is recognised by its first key (domainbed_itl.losses.families says which keys each
family has). `LearnedLoss` validates once, when it is made, through its family's checks, so
everything downstream holds a loss that deploys.

Learned losses shipped with the package (presets) live in `domainbed_itl/losses/presets/` as
`<name>.json`, in exactly that form, beside `<name>.provenance.json`, which says where the loss
comes from (source run, command, budget, date, results) and holds the meta-training settings
that deployment records cite. Every reader takes `preset:<name>` wherever it takes a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from domainbed_itl.losses.families import FAMILIES, LearnedLossError, LossFamily, get_family
from domainbed_itl.losses.probe import probe_problem

ADVICE = ("give the learned_loss.json that domainbed_itl.scripts.meta_train or .meta_cmaes "
          "wrote, or preset:<name>")
PRESET_PREFIX = "preset:"
PROVENANCE_SUFFIX = ".provenance.json"


@dataclass(frozen=True)
class LearnedLoss:
    """One learned loss: `family` (a name in domainbed_itl.losses.families.FAMILIES), `order`
    (None for a family without one; its default when omitted) and its `parameters` (Taylor:
    the two centres then the coefficients; iSCE: alpha, beta)."""

    family: str
    parameters: tuple[float, ...]
    order: int | None = None

    def __post_init__(self) -> None:
        fmt = get_family(self.family)
        order = fmt.check_order(self.order)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "parameters", fmt.check(self.parameters, order))

    @property
    def format(self) -> LossFamily:
        return FAMILIES[self.family]

    def describe(self) -> str:
        return self.family if self.order is None else f"{self.family} order-{self.order}"

    def hparams(self) -> dict[str, Any]:
        """The `--hparams` object that deploys this loss (the content of learned_loss.json)."""
        return self.format.to_hparams(self.parameters, self.order)

    def deployment(self) -> tuple[str, dict[str, Any]]:
        """(algorithm, hparams): how `domainbed.scripts.train` trains with this loss."""
        return self.format.algorithm, self.hparams()

    def module(self, reduction: str = "mean") -> nn.Module:
        """The loss as an nn.Module, used like nn.CrossEntropyLoss."""
        return self.format.module(self.parameters, self.order, reduction)

    def to_json(self) -> str:
        return json.dumps(self.hparams(), indent=2) + "\n"

    @classmethod
    def from_hparams(cls, obj: Any) -> LearnedLoss:
        """The loss an hparams object deploys; LearnedLossError if it holds anything else."""
        if not isinstance(obj, dict):
            raise LearnedLossError(f"expected a JSON object of hyperparameters, got "
                                   f"{type(obj).__name__}")
        matches = [name for name, fmt in FAMILIES.items() if fmt.keys[0] in obj]
        if len(matches) != 1:
            what = "both" if len(matches) == 2 else ("several" if matches else "no")
            raise LearnedLossError(
                f"has {what} " + " and ".join(
                    f"{fmt.keys[0]!r} ({name})" for name, fmt in FAMILIES.items())
                + "; a learned loss has exactly one family's keys")
        fmt = FAMILIES[matches[0]]
        unknown = sorted(set(obj) - fmt.hparam_keys)
        if unknown:
            raise LearnedLossError(f"holds {', '.join(unknown)}, which {fmt.algorithm} does not "
                                   f"take (only {', '.join(sorted(fmt.hparam_keys))})")
        order, values = fmt.parse(obj)
        return cls(fmt.name, values, order)

    @classmethod
    def from_file(cls, path: str | Path) -> LearnedLoss:
        """The loss in a learned_loss.json or a `preset:<name>`; LearnedLossError naming the
        file and what to give."""
        try:
            obj = json.loads(resolve(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            reason = " ".join(str(err).split())
            raise LearnedLossError(f"cannot read learned loss {str(path)!r} ({reason}); "
                                   f"{ADVICE}") from None
        try:
            loss = cls.from_hparams(obj)
            check_on_probe(loss)
        except LearnedLossError as err:
            raise LearnedLossError(f"{str(path)!r}: {err}; {ADVICE}") from None
        return loss


def check_on_probe(loss: LearnedLoss) -> None:
    """LearnedLossError unless `loss` has a finite value and gradient on the probe batch
    (domainbed_itl.losses.probe): finite parameters can still overflow in training."""
    try:
        problem = probe_problem(loss.module())
    except ValueError as err:  # the module's own check, e.g. parameters beyond float32
        problem = " ".join(str(err).split())
    if problem is not None:
        raise LearnedLossError(f"the {loss.describe()} loss cannot be trained with: {problem}")


def presets_dir() -> Path:
    """Where the shipped presets lie (inside the installed package)."""
    return Path(str(resources.files("domainbed_itl.losses.presets")))


def presets() -> list[str]:
    """The names of the shipped learned losses, each usable as `preset:<name>`."""
    return sorted(p.name.removesuffix(".json") for p in presets_dir().glob("*.json")
                  if not p.name.endswith(PROVENANCE_SUFFIX))


def preset_name(source: str | Path) -> str | None:
    """`name` for `preset:name`, None for a file path."""
    text = str(source)
    return text.removeprefix(PRESET_PREFIX) if text.startswith(PRESET_PREFIX) else None


def resolve(source: str | Path) -> Path:
    """The file that `source` (a path or `preset:<name>`) names; LearnedLossError for an
    unknown preset, listing the shipped ones, or a path that is no regular file."""
    name = preset_name(source)
    if name is None:
        path = Path(source)
        if path.exists() and not path.is_file():  # a FIFO would block the read for ever
            raise LearnedLossError(f"learned loss {str(source)!r} is not a regular file; "
                                   "give a learned_loss.json or preset:<name>")
        return path
    if name not in presets():
        raise LearnedLossError(f"unknown preset {name!r}; the shipped presets are: "
                               + ", ".join(presets()))
    return presets_dir() / f"{name}.json"


def preset_provenance(name: str) -> dict[str, Any]:
    """The provenance record shipped beside preset `name` (see the module docstring)."""
    resolve(PRESET_PREFIX + name)
    return json.loads((presets_dir() / f"{name}{PROVENANCE_SUFFIX}").read_text())
