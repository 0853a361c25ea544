"""The meta-learner's base model: a ReLU MLP held as a plain list of tensors.

Implicit gradients need the parameters as explicit autograd leaves (for Hessian-vector products
and mixed derivatives), and the inner loop needs to create and discard many models quickly, so
the model is a function of (params, x) rather than an nn.Module. Weights are stored (in, out) so
a layer is one `addmm` with no transpose.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Params = list[torch.Tensor]


def init_mlp(
    widths: Sequence[int],
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Params:
    """Fresh parameters [W1, b1, W2, b2, ...] for layer widths (input, hidden..., classes).

    Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, the scale nn.Linear uses,
    so the inner loop starts where an ordinary PyTorch MLP would. Drawn on the CPU from
    `generator` so a seed gives the same model on any device.
    """
    if len(widths) < 2 or any(int(w) < 1 for w in widths):
        raise ValueError(f"MLP widths must be >= 2 positive sizes, got {list(widths)}")
    params: Params = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        bound = 1.0 / math.sqrt(fan_in)
        for shape in ((fan_in, fan_out), (fan_out,)):
            t = torch.empty(shape, dtype=dtype).uniform_(-bound, bound, generator=generator)
            params.append(t.to(device).requires_grad_())
    return params


def mlp_forward(params: Params, x: torch.Tensor,
                activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu) -> torch.Tensor:
    """Logits of the MLP for a batch of flattened inputs (N x widths[0])."""
    h = x
    last = len(params) - 2
    for i in range(0, len(params), 2):
        h = torch.addmm(params[i + 1], h, params[i])
        if i < last:
            h = activation(h)
    return h


def accuracy(params: Params, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    """Fraction of correct predictions, evaluated in chunks without building a graph."""
    if len(y) == 0:
        return float("nan")
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(y), chunk):
            logits = mlp_forward(params, x[start : start + chunk])
            correct += int((logits.argmax(1) == y[start : start + chunk]).sum())
    return correct / len(y)


def stack_params(models: Sequence[Params]) -> Params:
    """K models' parameters as K-stacked autograd leaves [W1 (K, in, out), b1 (K, out), ...]."""
    return [torch.stack([m[i].detach() for m in models]).requires_grad_()
            for i in range(len(models[0]))]


def model_view(stacked: Params, k: int) -> Params:
    """Model k of a stack, as views that share storage (and gradients) with the stack."""
    return [p[k] for p in stacked]


def stacked_mlp_forward(params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits (K, N, classes) of K stacked MLPs, each on its own batch x[k] (K x N x in): one
    batched matrix product per layer for all K models."""
    h = x
    last = len(params) - 2
    for i in range(0, len(params), 2):
        h = torch.baddbmm(params[i + 1].unsqueeze(1), h, params[i])
        if i < last:
            h = torch.relu(h)
    return h
