"""A learned loss as one value: its family, its order and its parameters, from meta-training to
deployment.

Meta-training (`domainbed_itl.meta.train`, `.cmaes`) writes it as `learned_loss.json`; the
comparisons (`domainbed_itl.scripts.compare_losses`, `.deploy`), the plots and `--init` read it
back. The
file is the flat hyperparameter object that deploys it, exactly what `domainbed.scripts.train
--hparams` takes, so a user can paste it there unchanged:

    Taylor (order k):  {"itl_omega": [w0, w1, ...], "itl_order": k}   ("itl_order" omitted at 4)
    iSCE:              {"isce_alpha": a, "isce_beta": b}

The family is recognised by its keys. `LearnedLoss` validates once, when it is made, so
everything downstream holds a loss that deploys.

Learned losses shipped with the package (presets) live in `domainbed_itl/losses/presets/` as
`<name>.json`, in exactly that form, beside `<name>.provenance.json`, which says where the loss
comes from (source run, command, budget, date, results) and holds the meta-training settings
that deployment records cite. Every reader takes `preset:<name>` wherever it takes a file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from domainbed_itl.losses.registry import get_loss
from domainbed_itl.losses.taylor import n_taylor_params

DEFAULT_ORDER = 4
ADVICE = ("give the learned_loss.json that domainbed_itl.meta.train or .cmaes wrote, or "
          "preset:<name>")
PRESET_PREFIX = "preset:"
PROVENANCE_SUFFIX = ".provenance.json"


class LearnedLossError(ValueError):
    """A learned loss that cannot be deployed; the message says what is wrong."""


@dataclass(frozen=True)
class FamilyFormat:
    """How one family is written as hyperparameters and which algorithm deploys it."""

    algorithm: str
    keys: frozenset[str]
    required: str
    size: Callable[[int | None], int]
    to_hparams: Callable[[LearnedLoss], dict[str, Any]]
    parse: Callable[[Mapping[str, Any]], tuple[int | None, list[Any]]]
    build: Callable[[LearnedLoss, str], nn.Module]


def _taylor_hparams(loss: LearnedLoss) -> dict[str, Any]:
    out: dict[str, Any] = {"itl_omega": list(loss.parameters)}
    if loss.order != DEFAULT_ORDER:
        out["itl_order"] = loss.order
    return out


def _check_order(order: Any) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or order < 2:
        raise LearnedLossError(f"itl_order must be an integer >= 2, got {order!r}")
    return order


def _taylor_parse(obj: Mapping[str, Any]) -> tuple[int | None, list[Any]]:
    order = _check_order(obj.get("itl_order", DEFAULT_ORDER))
    omega = obj["itl_omega"]
    need = n_taylor_params(order)
    if not isinstance(omega, list) or len(omega) != need:
        got = f"{len(omega)} values" if isinstance(omega, list) else repr(omega)
        raise LearnedLossError(f"itl_omega must be a list of {need} numbers for itl_order "
                               f"{order} (2 centres + {need - 2} coefficients), got {got}")
    return order, omega


def _isce_parse(obj: Mapping[str, Any]) -> tuple[int | None, list[Any]]:
    missing = [k for k in ("isce_alpha", "isce_beta") if k not in obj]
    if missing:
        raise LearnedLossError(f"an iSCE loss needs isce_alpha and isce_beta; {missing[0]} "
                               "is missing")
    return None, [obj["isce_alpha"], obj["isce_beta"]]


FAMILIES: dict[str, FamilyFormat] = {
    "taylor": FamilyFormat(
        "ERM_ITL", frozenset({"itl_omega", "itl_order"}), "itl_omega",
        lambda order: n_taylor_params(order if order is not None else DEFAULT_ORDER),
        _taylor_hparams, _taylor_parse,
        lambda loss, reduction: get_loss("taylor", omega=list(loss.parameters),
                                         order=loss.order, reduction=reduction)),
    "isce": FamilyFormat(
        "ERM_iSCE", frozenset({"isce_alpha", "isce_beta"}), "isce_alpha",
        lambda order: 2,
        lambda loss: {"isce_alpha": loss.parameters[0], "isce_beta": loss.parameters[1]},
        _isce_parse,
        lambda loss, reduction: get_loss("isce", alpha=loss.parameters[0],
                                         beta=loss.parameters[1], reduction=reduction)),
}


def _finite_numbers(values: Sequence[Any], what: str) -> tuple[float, ...]:
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise LearnedLossError(f"{what} must hold numbers only, got {list(values)!r:.200}")
    if not all(math.isfinite(v) for v in values):
        raise LearnedLossError(f"{what} loss parameters must be finite, got {list(values)!r:.200}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class LearnedLoss:
    """One learned loss: `family` (a key of FAMILIES), `order` (Taylor only, None for iSCE) and
    its `parameters` (Taylor: the two centres then the coefficients; iSCE: alpha, beta)."""

    family: str
    parameters: tuple[float, ...]
    order: int | None = None

    def __post_init__(self) -> None:
        fmt = FAMILIES.get(self.family)
        if fmt is None:
            raise LearnedLossError(f"unknown loss family {self.family!r}; choose "
                                   + " or ".join(FAMILIES))
        if self.family == "taylor" and self.order is None:
            object.__setattr__(self, "order", DEFAULT_ORDER)
        order = self.order
        if self.family != "taylor" and order is not None:
            raise LearnedLossError(f"a {self.family} loss has no order, got {order!r}")
        if order is not None:
            _check_order(order)
        values = _finite_numbers(list(self.parameters), self.family.capitalize())
        if len(values) != fmt.size(order):
            raise LearnedLossError(f"a {self.describe()} loss needs {fmt.size(order)} "
                                   f"parameters, got {len(values)}")
        object.__setattr__(self, "parameters", values)

    @property
    def format(self) -> FamilyFormat:
        return FAMILIES[self.family]

    def describe(self) -> str:
        return self.family if self.order is None else f"{self.family} order-{self.order}"

    def hparams(self) -> dict[str, Any]:
        """The `--hparams` object that deploys this loss (the content of learned_loss.json)."""
        return self.format.to_hparams(self)

    def deployment(self) -> tuple[str, dict[str, Any]]:
        """(algorithm, hparams): how `domainbed.scripts.train` trains with this loss."""
        return self.format.algorithm, self.hparams()

    def module(self, reduction: str = "mean") -> nn.Module:
        """The loss as an nn.Module, used like nn.CrossEntropyLoss."""
        return self.format.build(self, reduction)

    def to_json(self) -> str:
        return json.dumps(self.hparams(), indent=2) + "\n"

    @classmethod
    def from_hparams(cls, obj: Any) -> LearnedLoss:
        """The loss an hparams object deploys; LearnedLossError if it holds anything else."""
        if not isinstance(obj, dict):
            raise LearnedLossError(f"expected a JSON object of hyperparameters, got "
                                   f"{type(obj).__name__}")
        matches = [name for name, fmt in FAMILIES.items() if fmt.required in obj]
        if len(matches) != 1:
            what = "both" if matches else "no"
            raise LearnedLossError(
                f"has {what} " + " and ".join(
                    f"{fmt.required!r} ({name})" for name, fmt in FAMILIES.items())
                + "; a learned loss has exactly one family's keys")
        family = matches[0]
        fmt = FAMILIES[family]
        unknown = sorted(set(obj) - fmt.keys)
        if unknown:
            raise LearnedLossError(f"holds {', '.join(unknown)}, which {fmt.algorithm} does not "
                                   f"take (only {', '.join(sorted(fmt.keys))})")
        order, values = fmt.parse(obj)
        return cls(family, _finite_numbers(values, family.capitalize()), order)

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
            return cls.from_hparams(obj)
        except LearnedLossError as err:
            raise LearnedLossError(f"{str(path)!r}: {err}; {ADVICE}") from None


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
    unknown preset, listing the shipped ones."""
    name = preset_name(source)
    if name is None:
        return Path(source)
    if name not in presets():
        raise LearnedLossError(f"unknown preset {name!r}; the shipped presets are: "
                               + ", ".join(presets()))
    return presets_dir() / f"{name}.json"


def preset_provenance(name: str) -> dict[str, Any]:
    """The provenance record shipped beside preset `name` (see the module docstring)."""
    resolve(PRESET_PREFIX + name)
    return json.loads((presets_dir() / f"{name}{PROVENANCE_SUFFIX}").read_text())
