"""Whether `--precision bf16` pays on this machine.

bfloat16 autocast is about 2.5x faster than fp32 on a CPU with bf16 units (AMX, or
AVX512-BF16), and several times slower on one without (AVX2 only), where every bf16
operation is emulated. GPUs have them. A command asked for bf16 on such a CPU says so once,
at start-up: the flag `BF16_WARNED` set in the environment keeps the training runs it
launches from saying it again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
BF16_WARNED = "DOMAINBED_BF16_WARNED"


def cpu_flags() -> set[str] | None:
    """The CPU feature flags Linux lists in /proc/cpuinfo; None where it cannot be read
    (another system), so that nothing is claimed about a CPU we cannot see."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags


def warn_if_bf16_is_slow(precision: str, prog: str, device: str | None = None) -> None:
    """One line on stderr, once per command, when bf16 is asked for on a CPU without bf16
    units; `device` is where training runs (default: where domainbed.scripts.train would)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision != "bf16" or device != "cpu" or os.environ.get(BF16_WARNED):
        return
    flags = cpu_flags()
    if flags is None or flags & BF16_CPU_FLAGS:
        return
    os.environ[BF16_WARNED] = "1"
    print(f"{prog}: warning: this CPU has no bf16 units (AMX or AVX512-BF16), so "
          "--precision bf16 runs several times slower than fp32 here; use --precision fp32",
          file=sys.stderr)
