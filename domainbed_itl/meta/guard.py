"""Non-finite checks for the meta-learner.

A polynomial loss is unbounded: a step in w can make an inner loop overflow, and the Neumann
series can blow up when alpha is too large for the Hessian. Every such event must turn into a
skipped, logged update, never into a NaN written to the learned loss.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class NonFiniteError(ValueError):
    """Raised instead of storing or writing a tensor that holds NaN or infinity."""


def all_finite(tensors: torch.Tensor | Iterable[torch.Tensor]) -> bool:
    """True when every element of every tensor is finite."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def require_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Return `tensor` unchanged, or raise NonFiniteError naming `what`."""
    if not all_finite(tensor):
        raise NonFiniteError(f"refusing to use a non-finite {what}: {tensor.tolist()}")
    return tensor
