"""Combining the per-domain hypergradients: PCGrad gradient surgery or a plain mean.

Leave-one-domain-out gives one hypergradient per held-out domain; they often disagree, and a
plain mean lets one split cancel another. PCGrad (Yu et al., 2020) removes, from each gradient,
its component along any other gradient it conflicts with (negative inner product), visiting the
others in a random order, then combines what is left. The order matters when several conflicts
overlap, hence the seeded generator.
"""

from __future__ import annotations

import torch

METHODS = ("pcgrad", "mean")


def pcgrad(
    grads: torch.Tensor,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Project each row of `grads` (n x d) off the rows it conflicts with, then reduce.

    For row i, starting from g = grads[i], for every other row j in a random order: when
    g . grads[j] < 0, g -= (g . grads[j]) / |grads[j]|^2 * grads[j] (projections always use the
    original rows, as in Yu et al.). `reduction` is "mean" (same scale as a plain mean, so the
    outer learning rate means the same for both methods) or "sum" (PCGrad's own choice).
    """
    if grads.dim() != 2:
        raise ValueError(f"expected an (n, d) matrix of gradients, got shape {tuple(grads.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    n = grads.shape[0]
    sq_norms = (grads * grads).sum(1)
    projected = grads.clone()
    for i in range(n):
        g = projected[i]
        for j in torch.randperm(n, generator=generator).tolist():
            if j == i or sq_norms[j] == 0:
                continue
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g -= dot / sq_norms[j] * grads[j]
    return projected.mean(0) if reduction == "mean" else projected.sum(0)


def aggregate(
    grads: torch.Tensor, method: str = "pcgrad", generator: torch.Generator | None = None
) -> torch.Tensor:
    """One update direction from the per-domain hypergradients (n x d) by `method`."""
    if method == "pcgrad":
        return pcgrad(grads, generator)
    if method == "mean":
        return grads.mean(0)
    raise ValueError(f"unknown aggregation {method!r}; choose one of {', '.join(METHODS)}")
