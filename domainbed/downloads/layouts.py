"""What a finished dataset looks like on disk, shared by the downloader and the loaders.

Both sides read the same table, so the message a loader prints for missing data and the check
the downloader runs before declaring success can never disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FolderLayout:
    """`<data_dir>/<folder>/<domain>/<class>/<image>`, domains in sorted order."""

    folder: str
    domains: tuple[str, ...]
    num_classes: int

    def describe(self, data_dir: str | Path) -> str:
        return f"{Path(data_dir) / self.folder}/{{{','.join(self.domains)}}}/<class>/<image>"

    def problem(self, data_dir: str | Path) -> str | None:
        """Why the layout under `data_dir` is not usable, or None when it is."""
        base = Path(data_dir) / self.folder
        if not base.is_dir():
            return f"{base} is missing"
        for domain in self.domains:
            folder = base / domain
            if not folder.is_dir():
                return f"{folder} is missing"
            classes = [e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
            if len(classes) != self.num_classes:
                return f"{folder} has {len(classes)} class folders, expected {self.num_classes}"
        return None


@dataclass(frozen=True)
class WildsLayout:
    """WILDS keeps its own layout in `<data_dir>/<name>_v<version>`, marked complete by a
    `RELEASE_v<version>.txt` file that its downloader writes last."""

    folder: str
    version: str

    def describe(self, data_dir: str | Path) -> str:
        return f"{Path(data_dir) / self.folder}/ (as the wilds package lays it out)"

    def problem(self, data_dir: str | Path) -> str | None:
        marker = Path(data_dir) / self.folder / f"RELEASE_v{self.version}.txt"
        return None if marker.is_file() else f"{marker} is missing"


LAYOUTS: dict[str, FolderLayout | WildsLayout] = {
    "VLCS": FolderLayout("VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"), 5),
    "PACS": FolderLayout("PACS", ("art_painting", "cartoon", "photo", "sketch"), 7),
    "OfficeHome": FolderLayout("office_home", ("Art", "Clipart", "Product", "Real World"), 65),
    "TerraIncognita": FolderLayout(
        "terra_incognita", ("location_100", "location_38", "location_43", "location_46"), 10
    ),
    "DomainNet": FolderLayout(
        "domain_net", ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), 345
    ),
    "WILDSCamelyon": WildsLayout("camelyon17_v1.0", "1.0"),
    "WILDSFMoW": WildsLayout("fmow_v1.1", "1.1"),
}


def download_command(data_dir: str | Path, name: str) -> str:
    return f"python -m domainbed.scripts.download --data_dir {data_dir} --datasets {name}"
