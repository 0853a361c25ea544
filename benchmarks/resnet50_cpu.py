"""Seconds per image of a torchvision ResNet-50 on this machine: the figure behind
`domainbed_itl.scripts.plan`'s CPU estimate for the photo datasets.

    python benchmarks/resnet50_cpu.py [--train_batch 32] [--eval_batch 64] [--repeats 3]

Random weights and random 224x224 inputs cost what pretrained ones on real images cost; the
JPEG decoding of a real DomainBed job comes on top. The first repetition (warm-up) is dropped.
The load average is printed before and after: on a shared machine the figure is an upper bound.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torchvision


def seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train_batch", type=int, default=32)
    parser.add_argument("--eval_batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average before: {os.getloadavg()}")
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
    x = torch.randn(args.train_batch, 3, 224, 224)
    y = torch.randint(0, 7, (args.train_batch,))

    def train_step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.train()
    train_s = seconds(train_step, args.repeats)
    model.eval()
    batch = torch.randn(args.eval_batch, 3, 224, 224)
    with torch.no_grad():
        eval_s = seconds(lambda: model(batch), args.repeats)
    print(f"train: {train_s:.2f} s per step of {args.train_batch} images, "
          f"{train_s / args.train_batch:.3f} s per image")
    print(f"evaluate: {eval_s:.2f} s per batch of {args.eval_batch} images, "
          f"{eval_s / args.eval_batch:.3f} s per image")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
