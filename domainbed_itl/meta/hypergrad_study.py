"""The hypergradient accuracy study on problems small enough to solve exactly: the Neumann and
CG estimates against the exact implicit gradient at the inner optimum, over the HVP budget J and
over the length of a finite SGD inner run.

The problems are real MNIST downsampled to 7x7 (a few hundred images; held-out = MNIST test
images) with L_w the order-4 Taylor loss at its cross-entropy-like start and a small L2 penalty,
so the inner problem has a well-defined optimum that L-BFGS and Newton steps reach; the exact
implicit gradient there is itself checked against central finite differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.datasets import MNIST

from domainbed_itl.meta.base_model import Params, init_mlp, mlp_forward
from domainbed_itl.meta.families import make_family
from domainbed_itl.meta.hypergrad import (
    _objectives,
    exact_hypergradient,
    full_hessian,
    implicit_hypergradient,
)

PROBLEMS = {"logreg": (), "mlp": (16,)}
# The J sweep's solvers at equal HVP budgets: (label, solver, Neumann alpha).
SOLVER_ROWS = (("1/lambda_max", "neumann", "1/lambda_max"), ("0.01", "neumann", 0.01),
               ("auto", "neumann", "auto"), ("", "cg", 0.01))
DTYPE = torch.float64


def smooth_mlp_forward(params: Params, x: torch.Tensor) -> torch.Tensor:
    """The base model's MLP with tanh instead of ReLU: ReLU's kinks keep L-BFGS from reaching a
    stationary point (the gradient norm stalls near 1e-2), and the IFT needs one."""
    return mlp_forward(params, x, activation=torch.tanh)


def load_mnist_small(data_dir: str, n_train: int, n_val: int) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val): 7x7 average-pooled MNIST, training images for the inner
    problem and test images for the held-out loss."""
    def take(train: bool, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ds = MNIST(data_dir, train=train, download=False)
        x = ds.data[:n].to(DTYPE).unsqueeze(1) / 255.0
        return F.avg_pool2d(x, 4).flatten(1), ds.targets[:n].clone()

    return (*take(True, n_train), *take(False, n_val))


class Problem:
    """One inner problem: L2-penalised L_w on the training images, cross-entropy held out."""

    def __init__(self, data: tuple[torch.Tensor, ...], hidden: tuple[int, ...], l2: float,
                 seed: int) -> None:
        self.xt, self.yt, self.xv, self.yv = data
        self.family = make_family("taylor", 4)
        self.l2 = l2
        self.forward = smooth_mlp_forward
        widths = (self.xt.shape[1], *hidden, 10)
        self.init = [p.detach() for p in
                     init_mlp(widths, torch.Generator().manual_seed(seed), dtype=DTYPE)]
        self.w = self.family.preset("ce_like", 10, torch.Generator().manual_seed(seed)).to(DTYPE)

    def train_loss(self, theta: Params, w: torch.Tensor, rows: torch.Tensor | None = None
                   ) -> torch.Tensor:
        x, y = (self.xt, self.yt) if rows is None else (self.xt[rows], self.yt[rows])
        penalty = sum((p ** 2).sum() for p in theta)
        return self.family.loss(self.forward(theta, x), y, w) + 0.5 * self.l2 * penalty

    def val_loss(self, theta: Params) -> torch.Tensor:
        return F.cross_entropy(self.forward(theta, self.xv), self.yv)

    def solve(self, w: torch.Tensor, start: Sequence[torch.Tensor] | None = None,
              tol: float = 1e-10, newton_steps: int = 20) -> Params:
        """The inner optimum by full-batch L-BFGS, then Newton steps until the gradient norm is
        below `tol`."""
        params = [p.detach().clone().requires_grad_() for p in (start or self.init)]

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = self.train_loss(params, w)
            loss.backward()
            return loss

        opt = torch.optim.LBFGS(params, max_iter=5000, tolerance_grad=1e-13,
                                tolerance_change=1e-18, history_size=50,
                                line_search_fn="strong_wolfe")
        opt.step(closure)
        for _ in range(newton_steps):
            if _grad_norm(self, params, w) < tol:
                break
            self._newton_step(params, w)
        return params

    def _newton_step(self, params: Params, w: torch.Tensor) -> None:
        """theta <- theta - H^-1 g with the exact Hessian: L-BFGS stalls short of the optimum on
        the MLP, where a few Newton steps then converge quadratically."""
        theta = [p.detach().requires_grad_() for p in params]
        grads = torch.autograd.grad(self.train_loss(theta, w), theta, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads]).detach()
        step = torch.linalg.solve(full_hessian(grads, theta), flat)
        with torch.no_grad():
            for p, d in zip(params, torch.split(step, [p.numel() for p in params]),
                            strict=True):
                p.sub_(d.reshape(p.shape))

    def sgd(self, steps: int, lr: float, batch: int, seed: int) -> Params:
        params = [p.detach().clone().requires_grad_() for p in self.init]
        g = torch.Generator().manual_seed(seed)
        index = torch.randint(len(self.yt), (steps, batch), generator=g)
        for t in range(steps):
            grads = torch.autograd.grad(self.train_loss(params, self.w, index[t]), params)
            with torch.no_grad():
                for p, d in zip(params, grads, strict=True):
                    p.sub_(d, alpha=lr)
        return params


def _compare(estimate: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    return {"cosine": float(F.cosine_similarity(estimate, truth, dim=0)),
            "rel_error": float((estimate - truth).norm() / truth.norm())}


def hessian_spectrum(problem: Problem, params: Params) -> tuple[float, float]:
    """Largest and smallest eigenvalue of the training Hessian (the IFT needs it positive
    definite; 1 / largest is the fastest convergent Neumann step)."""
    theta, _, grads, _, _ = _objectives(params, problem.w, problem.train_loss, problem.val_loss)
    eig = torch.linalg.eigvalsh(full_hessian(grads, theta))
    return float(eig.max()), float(eig.min())


def study_problem(problem: Problem, name: str, js: Sequence[int], inner_lengths: Sequence[int],
                  inner_lr: float, fd_eps: float, seed: int) -> dict[str, Any]:
    """Truth, finite-difference check, J sweep and inner-length sweep for one problem."""
    opt = problem.solve(problem.w)
    theta = [p.detach().requires_grad_() for p in opt]
    lam_max, lam_min = hessian_spectrum(problem, theta)
    truth = exact_hypergradient(theta, problem.w, problem.train_loss, problem.val_loss)
    fd = torch.stack([
        (problem.val_loss(problem.solve(problem.w + fd_eps * e, opt))
         - problem.val_loss(problem.solve(problem.w - fd_eps * e, opt))) / (2 * fd_eps)
        for e in torch.eye(len(problem.w), dtype=DTYPE)
    ]).detach()
    summary = {"problem": name, "n_params": sum(p.numel() for p in theta),
               "lambda_max": lam_max, "lambda_min": lam_min, "is_minimum": lam_min > 0,
               "grad_norm_at_optimum": _grad_norm(problem, theta),
               **{f"exact_vs_fd_{k}": v for k, v in _compare(truth, fd).items()}}
    rows = []
    for label, solver, alpha in SOLVER_ROWS:
        alpha = 1.0 / lam_max if alpha == "1/lambda_max" else alpha
        for j in js:
            hg = implicit_hypergradient(theta, problem.w, problem.train_loss, problem.val_loss,
                                        alpha, j, solver=solver)
            rows.append({"problem": name, "sweep": "J", "solver": solver, "J": j,
                         "hvps": hg.hvps, "inner_steps": "optimum", "alpha": label,
                         **_compare(hg.grad, truth), "neumann_ratio": hg.neumann_ratio})
    for steps in inner_lengths:
        end = problem.sgd(steps, inner_lr, 32, seed)
        hg = implicit_hypergradient(end, problem.w, problem.train_loss, problem.val_loss,
                                    1.0 / lam_max, 15)
        cg = implicit_hypergradient(end, problem.w, problem.train_loss, problem.val_loss,
                                    terms=15, solver="cg")
        exact_end = exact_hypergradient(end, problem.w, problem.train_loss, problem.val_loss)
        rows.append({"problem": name, "sweep": "inner_steps", "J": 15, "inner_steps": steps,
                     "alpha": "1/lambda_max", **_compare(hg.grad, truth),
                     "neumann_ratio": hg.neumann_ratio,
                     **{f"cg_{k}": v for k, v in _compare(cg.grad, truth).items()},
                     "exact_at_end_cosine": _compare(exact_end, truth)["cosine"],
                     "grad_norm_at_end": _grad_norm(problem, end)})
    return {"summary": summary, "rows": rows}


def _grad_norm(problem: Problem, theta: Params, w: torch.Tensor | None = None) -> float:
    params = [p.detach().requires_grad_() for p in theta]
    w = problem.w if w is None else w
    grads = torch.autograd.grad(problem.train_loss(params, w), params)
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads)))


def run_study(data_dir: str, problems: Sequence[str] = tuple(PROBLEMS),
              js: Sequence[int] = (1, 5, 15, 50, 200),
              inner_lengths: Sequence[int] = (50, 200, 1000, 5000), n_train: int = 300,
              n_val: int = 300, l2: float = 1e-2, inner_lr: float = 0.1, fd_eps: float = 1e-4,
              seed: int = 0) -> dict[str, Any]:
    """Every requested problem's study; {'summaries': [...], 'rows': [...]}."""
    data = load_mnist_small(data_dir, n_train, n_val)
    summaries, rows = [], []
    for name in problems:
        result = study_problem(Problem(data, PROBLEMS[name], l2, seed), name, js,
                               inner_lengths, inner_lr, fd_eps, seed)
        summaries.append(result["summary"])
        rows.extend(result["rows"])
    return {"summaries": summaries, "rows": rows}
