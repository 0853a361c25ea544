"""The inner problem: train a fresh base model with the current loss L_w by plain SGD.

The inner loop runs thousands of tiny steps per outer step, so it is kept to the bare cost of
the MLP's forward and backward: all batch indices are drawn up front from one generator, the
data are in-memory tensors indexed directly (no DataLoader), and the update is an in-place
`sub_` under no_grad. Finiteness is tracked in a tensor and only looked at every
`check_every` steps, so a GPU run does not synchronise on every step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from domainbed_itl.meta.base_model import Params, mlp_forward
from domainbed_itl.meta.guard import all_finite

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class InnerResult:
    """Trained parameters and whether training stayed finite (a diverged run is unusable for
    the implicit gradient, whose premise is a stationary point)."""

    params: Params
    finite: bool
    steps_done: int
    last_loss: float


def sample_batches(n: int, steps: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (steps x batch_size) drawn uniformly with replacement from range(n)."""
    if n < 1 or steps < 0 or batch_size < 1:
        raise ValueError(f"cannot sample {steps} batches of {batch_size} from {n} examples")
    return torch.randint(n, (steps, batch_size), generator=generator)


def train_inner(
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    pool: torch.Tensor | None = None,
    check_every: int = 50,
) -> InnerResult:
    """Run `steps` SGD steps of `loss_fn(logits, y)` on random batches of (x, y), in place.

    `pool` (optional) lists the rows of x that may be drawn, so leave-one-domain-out splits
    index one pooled tensor instead of copying the source domains for every split.
    """
    n = len(y) if pool is None else len(pool)
    index = sample_batches(n, steps, batch_size, generator)
    if pool is not None:
        index = pool[index]
    return train_on_batches(params, x, y, loss_fn, index, lr, check_every)


def train_on_batches(
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    batches: torch.Tensor,
    lr: float,
    check_every: int = 50,
) -> InnerResult:
    """One SGD step of `loss_fn(logits, y)` per row of `batches` (steps x batch rows of x), in
    place.

    `loss_fn` must not need gradients for anything but the logits (detach w before building
    it): the implicit gradient only uses the end point, so no graph is kept across steps.
    Stops early at the first check that sees a non-finite loss.
    """
    index = batches.to(x.device)
    bad = torch.zeros((), dtype=torch.bool, device=x.device)
    loss = torch.zeros((), device=x.device)
    done = 0
    for t in range(len(index)):
        batch = index[t]
        loss = loss_fn(mlp_forward(params, x[batch]), y[batch])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(g, alpha=lr)
            bad |= ~torch.isfinite(loss)
        done = t + 1
        if done % check_every == 0 and bool(bad):
            break
    finite = not bool(bad) and all_finite(params)
    return InnerResult(params, finite, done, float(loss.detach()))
