"""Loss families the meta-learner can learn: Taylor polynomials of order 2-5 (the paper's ITL
family, Eq. 8-10 and Fig. 6) and iSCE, the learned (alpha, beta) mix of symmetric
cross-entropy (Sec. 4.4).

A family is a thin adapter: the loss itself lives in domainbed_itl.losses, so the meta-learner
trains with exactly the function ERM_ITL later deploys. What a family adds is what meta-training
needs around it: the size of w, named starting points, and the `LearnedLoss` that hands the
learned w to deployment.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from domainbed_itl.losses.baselines import symmetric_ce
from domainbed_itl.losses.learned import LearnedLoss, LearnedLossError
from domainbed_itl.losses.taylor import ITL_OMEGA, n_taylor_params, taylor_loss

TAYLOR_ORDERS = (2, 3, 4, 5)
INIT_PRESETS = ("ce_like", "ce_bounded", "random", "itl")
# ce_bounded keeps every |w_i| within Table 8's scale (its largest |w_i| is 2.02), so that the
# paper's outer step (gradient descent, lr 0.01, 200 steps) can move w by a sizeable fraction.
BOUNDED_SCALE = 2.0


class LossFamily(Protocol):
    """What the meta-learner needs from a parametric loss L_w."""

    name: str

    @property
    def n_params(self) -> int: ...

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Batch-mean loss; differentiable twice in the logits and once more in w."""
        ...

    def spec(self) -> dict[str, Any]:
        """What identifies the family in configs and checkpoints."""
        ...

    def learned(self, w: torch.Tensor) -> LearnedLoss:
        """The loss at w, as meta-training hands it to deployment."""
        ...

    def preset(self, name: str, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        """A named starting point (see INIT_PRESETS)."""
        ...


def _ce_logit_gradients(n: int, num_classes: int, generator: torch.Generator):
    """Logits spanning what training visits (near-uniform to confident, right and wrong), their
    labels, and cross-entropy's gradient with respect to them (softmax - one-hot)."""
    y = torch.randint(num_classes, (n,), generator=generator)
    spread = 3.0 * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    margin = -3.0 + 12.0 * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    z = spread * torch.randn(n, num_classes, generator=generator, dtype=torch.float64)
    z = z + margin * F.one_hot(y, num_classes).double()
    return z, y, torch.softmax(z, 1) - F.one_hot(y, num_classes).double()


@dataclass(frozen=True)
class TaylorFamily:
    """Bivariate Taylor polynomial of order `order` in (softmax prob, one-hot label); w holds the
    two centres followed by the coefficients, ordered as domainbed_itl.losses.taylor does."""

    order: int = 4
    name: str = "taylor"

    def __post_init__(self) -> None:
        if self.order not in TAYLOR_ORDERS:
            raise ValueError(f"Taylor order must be one of {TAYLOR_ORDERS}, got {self.order}")

    @property
    def n_params(self) -> int:
        return n_taylor_params(self.order)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return taylor_loss(logits, targets, w, order=self.order)

    def spec(self) -> dict[str, Any]:
        return {"family": self.name, "order": self.order}

    def learned(self, w: torch.Tensor) -> LearnedLoss:
        return LearnedLoss(self.name, tuple(float(v) for v in w), self.order)

    def preset(self, name: str, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        if name == "itl":
            if self.order != 4:
                raise ValueError("--init itl is the paper's order-4 loss; use another --init")
            return torch.tensor(ITL_OMEGA, dtype=torch.float32)
        if name == "random":
            return 0.1 * torch.randn(self.n_params, generator=generator)
        if name == "ce_like":
            return self.fit_cross_entropy(num_classes, generator)
        if name == "ce_bounded":
            return self.fit_cross_entropy_bounded(num_classes, generator)
        raise ValueError(f"unknown --init {name!r}; choose {', '.join(INIT_PRESETS)} or a file")

    def fit_cross_entropy(
        self, num_classes: int, generator: torch.Generator, n: int = 4096
    ) -> torch.Tensor:
        """The family member whose gradients in the logits best match cross-entropy's, in least
        squares over sampled logits, with both centres at 0.

        This is the natural start for learning a replacement of CE: training with it behaves
        like training with CE, so the first inner loops learn and the first hypergradients are
        informative. With the centres fixed the logit gradient is linear in the coefficients,
        so the fit is one (minimum-norm) least-squares solve, in float64.
        """
        z, y, target = _ce_logit_gradients(n, num_classes, generator)
        design = self._logit_gradient_design(z, y, (0.0, 0.0))
        coef = torch.linalg.pinv(design) @ target.reshape(-1)
        return torch.cat([torch.zeros(2, dtype=torch.float64), coef]).float()

    def _logit_gradient_design(self, z: torch.Tensor, y: torch.Tensor,
                               centres: tuple[float, float]) -> torch.Tensor:
        """Columns: the logit gradient of each coefficient's monomial alone, at `centres`."""
        columns = []
        for k in range(2, self.n_params):
            w = torch.zeros(self.n_params, dtype=torch.float64)
            w[0], w[1], w[k] = centres[0], centres[1], 1.0
            zk = z.clone().requires_grad_()
            (grad,) = torch.autograd.grad(self.loss(zk, y, w) * len(y), zk)
            columns.append(grad.reshape(-1))
        return torch.stack(columns, 1)

    def fit_cross_entropy_bounded(
        self, num_classes: int, generator: torch.Generator, bound: float = BOUNDED_SCALE,
        n: int = 1024, grid: int = 9
    ) -> torch.Tensor:
        """The member whose logit gradients best match cross-entropy's (least squares over
        sampled logits, as `fit_cross_entropy`) among those with every |w_i| <= `bound`.

        Why: the unconstrained fit needs coefficients near 200 (its monomials nearly cancel),
        which the paper's outer step of 0.01 cannot move. Moving the centres off 0 re-expresses
        the same polynomials with smaller coefficients, so the centres are searched on a
        `grid` x `grid` lattice over [-bound, bound] and the coefficients fitted under the box
        at each; the best keeps two thirds of CE's gradient (ce_like: three quarters).
        """
        from scipy.optimize import lsq_linear  # here: a second of import only this start needs

        z, y, target = _ce_logit_gradients(n, num_classes, generator)
        t = target.reshape(-1).numpy()
        best: tuple[float, torch.Tensor] | None = None
        for c0 in torch.linspace(-bound, bound, grid).tolist():
            for c1 in torch.linspace(-bound, bound, grid).tolist():
                design = self._logit_gradient_design(z, y, (c0, c1)).numpy()
                fit = lsq_linear(design, t, bounds=(-bound, bound))
                if best is None or fit.cost < best[0]:
                    coef = torch.as_tensor(fit.x, dtype=torch.float64)
                    best = (float(fit.cost), torch.cat([torch.tensor([c0, c1]).double(), coef]))
        return best[1].float()


@dataclass(frozen=True)
class ISCEFamily:
    """iSCE: w = (alpha, beta) in alpha * CE + beta * RCE, with RCE's log 0 set to -4
    (domainbed_itl.losses.symmetric_ce), so RCE = 4 * (1 - p_true)."""

    name: str = "isce"

    @property
    def n_params(self) -> int:
        return 2

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return symmetric_ce(logits, targets, w[0], w[1]).mean()

    def spec(self) -> dict[str, Any]:
        return {"family": self.name}

    def learned(self, w: torch.Tensor) -> LearnedLoss:
        return LearnedLoss(self.name, (float(w[0]), float(w[1])))

    def preset(self, name: str, num_classes: int, generator: torch.Generator) -> torch.Tensor:
        if name == "ce_like":
            return torch.tensor([1.0, 0.0])
        if name == "random":
            return torch.rand(2, generator=generator)
        raise ValueError(f"--init {name!r} does not apply to iSCE; use ce_like, random or a file")


def make_family(name: str, order: int = 4) -> LossFamily:
    """The family named on the command line."""
    if name == "taylor":
        return TaylorFamily(order)
    if name == "isce":
        return ISCEFamily()
    raise ValueError(f"unknown loss family {name!r}; choose taylor or isce")


def initial_w(
    family: LossFamily, init: str, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Starting w from a preset name or a JSON file (see w_from_file), checked for size and
    finiteness."""
    if init in INIT_PRESETS:
        return _checked(family.preset(init, num_classes, generator), family)
    return w_from_file(family, init)


def w_from_file(family: LossFamily, init: str) -> torch.Tensor:
    """w from a JSON file: a learned_loss.json of this family (any `LearnedLoss` in its
    --hparams form) or a plain list; anything else is a ValueError saying what the file must
    hold."""
    path = Path(init)
    if not path.is_file():
        raise ValueError(f"--init {init!r} is neither {', '.join(INIT_PRESETS)} nor a file")
    try:
        w = torch.tensor(_values_from_json(json.loads(path.read_text()), family),
                         dtype=torch.float32)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        message = " ".join(str(err).split())
        raise ValueError(f"--init {init!r} holds no {family.spec()} w ({message:.200}); give a "
                         "learned_loss.json or a JSON list of numbers") from None
    return _checked(w, family)


def _checked(w: torch.Tensor, family: LossFamily) -> torch.Tensor:
    if w.shape != (family.n_params,):
        raise ValueError(f"{family.spec()} needs {family.n_params} values, got {tuple(w.shape)}")
    if not all(math.isfinite(float(v)) for v in w):
        raise ValueError(f"initial w is not finite: {w.tolist()}")
    return w.float()


def _values_from_json(obj: Any, family: LossFamily) -> list[float]:
    if isinstance(obj, list):
        return [_number(v) for v in obj]
    loss = LearnedLoss.from_hparams(obj)  # LearnedLossError is a ValueError
    if loss.family != family.name:
        raise LearnedLossError(f"it holds a {loss.describe()} loss")
    return list(loss.parameters)


def _number(value: Any) -> float:
    """A JSON number as a float; strings and booleans are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r:.50} is not a number")
    return float(value)
