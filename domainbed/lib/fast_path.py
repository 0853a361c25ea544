"""How a training run keeps an accelerator busy: where the data lives, how it is copied, how
the model is laid out and how evaluation is batched.

The *fast path* (the default) changes speed, not what is computed. On a CPU it is the plain
path: fp32 records stay bit-identical to those of `--fast_path off`. On CUDA it

- copies in-memory datasets (the MNIST benchmarks) to the device once, so a minibatch is an
  index into device memory and no loader or host-to-device copy is involved;
- gives datasets read from files (the photo benchmarks) one loader worker per core, pinned
  host memory and non-blocking copies, so decoding overlaps the training step;
- lays ResNet inputs and weights out channels-last, the layout tensor cores read directly;
- evaluates in large batches (always under `torch.inference_mode`).

On CUDA these change float rounding only, except the worker count: each DataLoader worker
draws its own augmentation randomness, so a different count gives different (equally valid)
augmentations, as with the public DomainBed. Two speed-ups that can change results from run
to run are opt-in: `--cudnn_benchmark` (cuDNN picks convolution algorithms by timing them) and
`--compile` (`torch.compile` of the algorithm's networks; `reduce-overhead` captures them in
CUDA graphs, which pays for launch-bound models such as the MNIST CNN).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from domainbed.datasets.multiple_domain import MultipleDomainDataset
from domainbed.lib.fast_data_loader import available_cores

# Set by the local and multi_gpu launchers to each job's share of the machine's cores, so that
# jobs sharing a machine do not each start a loader worker per core.
LOADER_WORKERS_ENV = "DOMAINBED_LOADER_WORKERS"

# The plain path's evaluation batch, the public DomainBed's; larger batches were not faster on
# the project's 2-core CPU.
PLAIN_EVAL_BATCH_SIZE = 64
# On CUDA: in-memory datasets in batches that fill the device, image datasets in batches that
# keep the loader workers' shared-memory queue small.
CUDA_EVAL_BATCH_SIZE = {"tensors": 2048, "files": 256}
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# The input size of the photo benchmarks, whose ResNets gain from a channels-last layout.
RESNET_INPUT = (224, 224)


@dataclass(frozen=True)
class FastPath:
    """The resolved settings of one run: what `--fast_path` and its flags mean on this device."""

    device: str
    resident: bool
    pin_memory: bool
    channels_last: bool
    eval_batch_size: int
    loader_workers: int | None  # None: the dataset's own N_WORKERS, capped at the cores
    compile_mode: str | None
    cudnn_benchmark: bool

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """`x` on the run's device, in the run's layout; an asynchronous copy from pinned memory."""
        x = x.to(self.device, non_blocking=self.pin_memory)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def in_memory(dataset: MultipleDomainDataset) -> bool:
    """Whether every environment is a TensorDataset (no files to decode)."""
    return all(isinstance(env, TensorDataset) for env in dataset.datasets)


def resolve(device: str, dataset: MultipleDomainDataset, enabled: bool = True,
            eval_batch_size: int | None = None, loader_workers: int | None = None,
            compile_mode: str = "off", cudnn_benchmark: bool = False) -> FastPath:
    """The settings for a run on `device`; explicit flags win over the fast path's defaults."""
    fast_cuda = enabled and device == "cuda"
    tensors = in_memory(dataset)
    if eval_batch_size is None:
        eval_batch_size = (CUDA_EVAL_BATCH_SIZE["tensors" if tensors else "files"]
                           if fast_cuda else PLAIN_EVAL_BATCH_SIZE)
    if loader_workers is None and fast_cuda and not tensors:
        shared = os.environ.get(LOADER_WORKERS_ENV, "")
        loader_workers = int(shared) if shared.isdigit() else available_cores()
    image_input = tuple(dataset.input_shape[1:3]) == RESNET_INPUT
    return FastPath(
        device=device,
        resident=fast_cuda and tensors,
        pin_memory=fast_cuda and not tensors,
        channels_last=fast_cuda and image_input,
        eval_batch_size=eval_batch_size,
        loader_workers=loader_workers,
        compile_mode=None if compile_mode == "off" else compile_mode,
        cudnn_benchmark=cudnn_benchmark,
    )


def make_resident(dataset: MultipleDomainDataset, device: str) -> None:
    """Move every in-memory environment's tensors to `device`, once.

    The splits of a run are views of these environments, so they all index the moved tensors
    and a minibatch is gathered where the model runs.
    """
    for env in dataset.datasets:
        if isinstance(env, TensorDataset):
            env.tensors = tuple(tensor.to(device) for tensor in env.tensors)


def prepare_model(model: nn.Module, fast: FastPath) -> None:
    """Lay out and compile `model` (an Algorithm) as `fast` says, in place.

    `nn.Module.compile` compiles each network's forward without wrapping the module, so the
    state dict, and with it every checkpoint, keeps the keys of an uncompiled run.
    """
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    if fast.compile_mode is not None:
        names = ("featurizer", "classifier") if hasattr(model, "featurizer") else ("network",)
        for name in names:
            network = getattr(model, name, None)
            if isinstance(network, nn.Module):
                network.compile(mode=fast.compile_mode)
