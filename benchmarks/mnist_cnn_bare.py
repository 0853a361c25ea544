"""The floor under any DomainBed engine on RotatedMNIST: bare MNIST_CNN arithmetic.

A training step of ERM on RotatedMNIST is one forward and backward of MNIST_CNN on 5 x 64
images, and an evaluation is inference on 70,000 images. No engine can beat these kernels at
the same precision; comparing them with `train_rotatedmnist.py`'s figures shows how much of a
run is engine overhead and how much is arithmetic.

    python benchmarks/mnist_cnn_bare.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from domainbed import networks


def seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(networks.MNIST_CNN((2, 28, 28)), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(320, 2, 28, 28), torch.randint(0, 10, (320,))
    x_eval = torch.randn(256, 2, 28, 28).contiguous(memory_format=torch.channels_last)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for precision in ("fp32", "bf16"):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

        def train_step(autocast: torch.autocast = autocast) -> None:
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def predict(autocast: torch.autocast = autocast) -> None:
            with torch.inference_mode(), autocast:
                model(x_eval)

        step = seconds(train_step)
        per_image = seconds(predict) / len(x_eval)
        print(f"{precision}: fwd+bwd+Adam on 320 images {step:.3f} s; inference "
              f"{1000 * per_image:.3f} ms/image = {70000 * per_image:.1f} s for 70,000 images")


if __name__ == "__main__":
    main()
