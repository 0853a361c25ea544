"""The order of rows and columns: the paper's first, then others in DomainBed's listing order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from domainbed.lib.results_tables import PUBLIC_ALGORITHM_ORDER, PUBLIC_DATASET_ORDER

_MULTI_SOURCE = ["ERM", "SagNet", "CORAL", "CDANN", "RSC", "ERM_ITL"]
_SINGLE_SOURCE = ["ERM", "CORAL", "SagNet", "Mixup", "ERM_ITL"]
ALGORITHMS = {
    "1": ["RSC", "RSC_ITL", "ERM_BCE", "ERM", "ERM_SCE", "ERM_iSCE", "ERM_ITL"],
    "2": _MULTI_SOURCE,
    "3": ["ERM", "ERM_Focal", "ERM_SCE", "ERM_GCE", "ERM_LS", "ERM_ITL", "ERM_BCE", "ERM_iSCE"],
    "4": _SINGLE_SOURCE,
    "9": _MULTI_SOURCE,
    "10": _SINGLE_SOURCE,
}
_MULTI_DATASETS = ["ColoredMNIST", "VLCS", "PACS", "TerraIncognita", "OfficeHome", "DomainNet"]
_SINGLE_DATASETS = ["VLCS", "PACS", "OfficeHome", "TerraIncognita"]  # Tables 4 and 10, by data
DATASETS = {
    "1": ["PACS"], "2": _MULTI_DATASETS, "3": ["PACS"],
    "4": _SINGLE_DATASETS, "9": _MULTI_DATASETS, "10": _SINGLE_DATASETS,
}


def ordered(names: Iterable[str], first: Sequence[str], public: Sequence[str]) -> list[str]:
    present = set(names)
    head = [name for name in first if name in present]
    middle = [name for name in public if name in present and name not in head]
    return head + middle + sorted(present - set(head) - set(middle))


def algorithms(table: str, names: Iterable[str]) -> list[str]:
    return ordered(names, ALGORITHMS[table], PUBLIC_ALGORITHM_ORDER)


def datasets(table: str, names: Iterable[str]) -> list[str]:
    return ordered(names, DATASETS[table], PUBLIC_DATASET_ORDER)
