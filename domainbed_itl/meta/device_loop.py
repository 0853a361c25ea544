"""The stacked inner loop with nothing on the host per step, so that a GPU can run it from a
CUDA graph.

A step reads its minibatch rows from a table of all steps' rows (steps x K x batch, drawn up
front from each split's own generator and moved to the device once) at a step counter that
lives on the device and that the step itself advances; it gathers the batch from the one tensor
holding every domain's data, runs the K stacked models forward and backward, updates them in
place and folds the loss's finiteness into a device flag. No host value enters the step, so
`CapturedStep` can record it once and replay it. On a CPU the same step simply runs eagerly
(`CounterStep`), which is what the CPU tests exercise. Drawing the rows up front rather than
inside the graph keeps the batches identical on every device and to the sequential path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from domainbed_itl.meta.base_model import Params, stacked_mlp_forward

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Eager steps before capture: the allocator and autograd must have run the step once.
WARMUP = 3


def stacked_sgd_step(params: Params, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
                     loss_fn: LossFn, lr: float) -> torch.Tensor:
    """One SGD step of K stacked models, model k on rows[k] of (x, y); returns the loss.

    The loss is one call on all K x batch examples times K: `loss_fn` is a batch mean, so each
    model's gradient is the gradient of its own batch mean, as in the sequential loop.
    """
    k, b = rows.shape
    logits = stacked_mlp_forward(params, x[rows])
    loss = loss_fn(logits.reshape(k * b, -1), y[rows].reshape(-1)) * k
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.sub_(g, alpha=lr)
    return loss.detach()


class CounterStep:
    """stacked_sgd_step on the rows of step `counter` of `table` (steps x K x batch, on the
    device), advancing the counter and the non-finite flag `bad` on the device."""

    def __init__(self, params: Params, x: torch.Tensor, y: torch.Tensor, table: torch.Tensor,
                 loss_fn: LossFn, lr: float) -> None:
        self.params, self.x, self.y, self.loss_fn, self.lr = params, x, y, loss_fn, lr
        self.table = table.to(x.device)
        self.counter = torch.zeros(1, dtype=torch.long, device=x.device)
        self.bad = torch.zeros((), dtype=torch.bool, device=x.device)

    def __call__(self) -> None:
        rows = self.table.index_select(0, self.counter).squeeze(0)
        loss = stacked_sgd_step(self.params, self.x, self.y, rows, self.loss_fn, self.lr)
        with torch.no_grad():
            self.bad |= ~torch.isfinite(loss)
            self.counter += 1


class CapturedStep:
    """A CounterStep replayed from a CUDA graph: the first WARMUP calls run it eagerly on a
    side stream, the next records it (recording runs nothing) and every call from then on
    replays it. Should capture fail, the step goes on eagerly, with a warning."""

    def __init__(self, step: CounterStep) -> None:
        self.step, self.calls = step, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager = False

    def __call__(self) -> None:
        if self.eager:
            self.step()
        elif self.calls < WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step()
            torch.cuda.current_stream().wait_stream(side)
        else:
            if self.graph is None and not self._capture():
                self.step()
            else:
                self.graph.replay()
        self.calls += 1

    def _capture(self) -> bool:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step()
        except RuntimeError as err:
            warnings.warn(f"CUDA graph capture of the inner step failed ({err}); running it "
                          "eagerly (pass --cuda_graphs off to skip the attempt)", stacklevel=2)
            self.eager = True
            return False
        self.graph = graph
        return True


def models_finite(params: Params) -> torch.Tensor:
    """(K,) flags: which stacked models have only finite parameters."""
    return torch.stack([torch.isfinite(p).flatten(1).all(1) for p in params]).all(0)


def train_stacked(params: Params, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                  table: torch.Tensor, lr: float, capture: bool = False,
                  check_every: int = 50) -> list[bool]:
    """SGD on K stacked models for len(table) steps, in place; which models stayed finite.

    A model that diverges does not disturb the others (their parameters never mix); the loop
    stops early only when every model has gone non-finite. A non-finite loss is shared by all
    models (one loss call), so when one was seen but every model's parameters are finite the
    divergence cannot be attributed and all models are reported non-finite.
    """
    step = CounterStep(params, x, y, table, loss_fn, lr)
    run = CapturedStep(step) if capture else step
    for t in range(len(table)):
        run()
        if (t + 1) % check_every == 0 and bool(step.bad) and not bool(models_finite(params).any()):
            break
    finite = models_finite(params)
    if bool(step.bad) and bool(finite.all()):
        finite = torch.zeros_like(finite)
    return [bool(f) for f in finite]
