"""The domains meta-learning trains on: a DomainBed dataset loaded into memory as one (x, y) pair
per environment, minus the environments held back for deployment (`--exclude_envs`)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from domainbed import datasets, hparams_registry
from domainbed.datasets import get_dataset_class

Domains = list[tuple[torch.Tensor, torch.Tensor]]


def check_dataset(name: str) -> None:
    """Refuse an unknown dataset by name, before seconds of loading."""
    if name not in datasets.DATASETS:
        raise ValueError(f"unknown --dataset {name!r}; choose one of: "
                         + ", ".join(datasets.DATASETS))


def load_domains(dataset: str, data_dir: str, seed: int) -> tuple[Domains, int]:
    """Every environment of `dataset` as in-memory (x, y) tensors, split as DomainBed would
    with this seed (the dataset shuffles with the global generator, so it is seeded here in a
    forked RNG scope that leaves the caller's state alone)."""
    hparams = hparams_registry.default_hparams("ERM", dataset)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ds = get_dataset_class(dataset)(data_dir, [], hparams)
    domains = []
    for env in ds.datasets:
        if isinstance(env, TensorDataset):
            x, y = env.tensors[0], env.tensors[1]
        else:
            items = [env[i] for i in range(len(env))]
            x = torch.stack([item[0] for item in items])
            y = torch.tensor([int(item[1]) for item in items])
        domains.append((x, y))
    return domains, ds.num_classes


def drop_envs(domains: Domains, exclude: list[int]) -> Domains:
    """The domains that stay after --exclude_envs; at least two must remain for
    leave-one-domain-out."""
    n = len(domains)
    bad = [e for e in exclude if not 0 <= e < n]
    if bad:
        raise ValueError(f"--exclude_envs {bad} out of range: the dataset has environments "
                         f"0..{n - 1}")
    skip = set(exclude)
    kept = [d for i, d in enumerate(domains) if i not in skip]
    if len(kept) < 2:
        raise ValueError(f"--exclude_envs leaves {len(kept)} environment(s); "
                         "leave-one-domain-out needs at least two")
    return kept
