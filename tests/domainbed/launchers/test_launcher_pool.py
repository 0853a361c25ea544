"""Several jobs on one machine: the multi_gpu launcher's jobs per GPU, and each job's share of
the cores for its data loaders (read by the training script's fast path)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from domainbed.datasets.multiple_domain import MultipleDomainDataset
from domainbed.launchers import REGISTRY
from domainbed.launchers.launcher import SettingError
from domainbed.launchers.multi_gpu import multi_gpu_launcher
from domainbed.lib import fast_path
from domainbed.lib.fast_data_loader import available_cores


def _waiting_job(tmp_path, i: int, n: int) -> str:
    """Writes what it sees, then waits (up to 60 s) until all n jobs have written: it ends only
    if the n jobs run at the same time."""
    return (f"echo $CUDA_VISIBLE_DEVICES $DOMAINBED_LOADER_WORKERS > {tmp_path}/job{i}; "
            f"for t in $(seq 600); do [ $(ls {tmp_path} | wc -l) -ge {n} ] && exit 0; "
            f"sleep 0.1; done; exit 1")


def test_multi_gpu_runs_jobs_per_gpu_at_once_each_with_a_share_of_the_cores(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("DOMAINBED_JOBS_PER_GPU", "2")
    commands = [_waiting_job(tmp_path, i, 4) for i in range(4)]
    assert multi_gpu_launcher(commands) == []
    seen = [(tmp_path / f"job{i}").read_text().split() for i in range(4)]
    assert Counter(gpu for gpu, _ in seen) == {"3": 2, "5": 2}
    assert {workers for _, workers in seen} == {str(max(1, available_cores() // 4))}


def test_a_bad_jobs_per_gpu_is_refused_before_the_sweep_starts(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("DOMAINBED_JOBS_PER_GPU", "0")
    with pytest.raises(SettingError, match="DOMAINBED_JOBS_PER_GPU must be an integer >= 1"):
        REGISTRY["multi_gpu"].check_settings()


class _Photos(MultipleDomainDataset):
    """Two environments that are not tensors in memory, as image folders are."""

    def __init__(self):
        super().__init__()
        self.input_shape = (3, 224, 224)
        self.num_classes = 2
        images = TensorDataset(torch.zeros(4, 3, 224, 224), torch.zeros(4, dtype=torch.long))
        self.datasets = [Subset(images, [0, 1]), Subset(images, [2, 3])]


def test_the_fast_path_takes_its_loader_workers_from_the_launchers_share(monkeypatch):
    monkeypatch.setenv(fast_path.LOADER_WORKERS_ENV, "3")
    assert fast_path.resolve("cuda", _Photos()).loader_workers == 3
    assert fast_path.resolve("cuda", _Photos(), loader_workers=5).loader_workers == 5
    assert fast_path.resolve("cpu", _Photos()).loader_workers is None
    monkeypatch.delenv(fast_path.LOADER_WORKERS_ENV)
    assert fast_path.resolve("cuda", _Photos()).loader_workers == available_cores()
