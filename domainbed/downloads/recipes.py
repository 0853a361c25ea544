"""Where each benchmark comes from and how its archives become DomainBed's layout.

`RECIPES` is the single table: per dataset, a list of steps run inside a staging directory next
to the final one. Only when every step has succeeded and the result has the layout in
`domainbed.downloads.layouts` is the staged folder renamed into place, so a failed or interrupted
download never leaves a partial dataset where the loaders would find it.

Sources are the public DomainBed's (Google Drive archives for VLCS, PACS and Office-Home, the
VisDA 2019 server for DomainNet, LILA for TerraIncognita) and the WILDS package's CodaLab
bundles. Only the DomainNet duplicate list has a published checksum; the archives are verified
structurally (zip CRCs, gzip trailers) while they are unpacked, and the result by its layout.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from domainbed.downloads import http
from domainbed.downloads.archives import check_archive, extract
from domainbed.downloads.integrity import CorruptFileError, FileSpec, verify
from domainbed.downloads.layouts import LAYOUTS, FolderLayout, WildsLayout
from domainbed.downloads.mnist_files import MnistUnavailable, ensure_mnist, raw_dir

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A dataset could not be put in place; the message is one line that says what to do."""


def gdrive(file_id: str) -> str:
    # The direct endpoint with confirm=t skips the "cannot scan for viruses" page large files get.
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


# --- steps --------------------------------------------------------------------------------------


class Step(Protocol):
    def run(self, stage: Path, timeout: float) -> None: ...


@dataclass(frozen=True)
class Fetch:
    """Download one file into `stage/into`; unpack it there (then delete it) if it is an archive."""

    url: str
    filename: str
    into: str = "."
    md5: str | None = None
    unpack: bool = True

    def run(self, stage: Path, timeout: float) -> None:
        target = stage / self.into / self.filename

        def check(path: Path) -> None:
            if self.md5 is not None:
                verify(path, FileSpec(self.filename, self.md5))
            if self.unpack:
                check_archive(path)

        log.info("downloading %s", self.url)
        http.download(self.url, target, check=check, timeout=timeout)
        if self.unpack:
            extract(target, target.parent)
            target.unlink()


@dataclass(frozen=True)
class Rename:
    src: str
    dst: str

    def run(self, stage: Path, timeout: float) -> None:
        source = stage / self.src
        if not source.exists():
            raise CorruptFileError(f"the archive did not contain {self.src}/")
        os.replace(source, stage / self.dst)


@dataclass(frozen=True)
class RemoveListed:
    """Delete the files named (one relative path a line) in `listing`, then the listing."""

    listing: str
    base: str

    def run(self, stage: Path, timeout: float) -> None:
        listing = stage / self.listing
        for line in listing.read_text().splitlines():
            if line.strip():
                (stage / self.base / line.strip()).unlink(missing_ok=True)
        listing.unlink()


@dataclass(frozen=True)
class SortCameraTraps:
    """Build TerraIncognita from the Caltech Camera Traps ECCV'18 release: keep four camera
    locations and ten categories, and file every kept image under
    `location_<id>/<category>/` once per annotation it carries."""

    base: str
    images: str
    annotations: str
    annotation_files: tuple[str, ...]
    locations: tuple[str, ...]
    categories: tuple[str, ...]

    def run(self, stage: Path, timeout: float) -> None:
        base = stage / self.base
        merged: dict[str, list] = defaultdict(list)
        for name in self.annotation_files:
            with open(base / self.annotations / name) as handle:
                for key, values in json.load(handle).items():
                    merged[key].extend(values)
        category_names = {c["id"]: c["name"] for c in merged["categories"]}
        labels = defaultdict(list)
        for annotation in merged["annotations"]:
            labels[annotation["image_id"]].append(category_names[annotation["category_id"]])
        for image in merged["images"]:
            location = str(image["location"])
            if location not in self.locations:
                continue
            for category in labels[image["id"]]:
                if category in self.categories:
                    folder = base / f"location_{location}" / category
                    folder.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(
                        base / self.images / image["file_name"], folder / image["file_name"]
                    )
        shutil.rmtree(base / self.images)
        shutil.rmtree(base / self.annotations)


# --- recipes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Steps that produce `layout` inside a staging directory."""

    name: str
    layout: FolderLayout | WildsLayout
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def describe(self, data_dir: Path) -> str:
        return self.layout.describe(data_dir)

    def install(self, data_dir: Path, timeout: float) -> str:
        problem = self.layout.problem(data_dir)
        if problem is None:
            return "already in place"
        final = data_dir / self.layout.folder
        if final.exists():
            raise DownloadError(
                f"{self.name}: {final} exists but is incomplete ({problem}); "
                f"move it away and run again, or complete {self.describe(data_dir)} by hand"
            )
        stage = data_dir / f".download-{self.name}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        try:
            for step in self.steps:
                step.run(stage, timeout)
            problem = self.layout.problem(stage)
            if problem is not None:
                raise CorruptFileError(f"the unpacked data does not match the layout: {problem}")
            os.replace(stage / self.layout.folder, final)
        except http.SourceUnreachable as err:
            raise DownloadError(
                f"{self.name}: cannot reach {err}; put {self.describe(data_dir)} in place by hand"
            ) from err
        except (CorruptFileError, OSError, KeyError, ValueError) as err:
            raise DownloadError(
                f"{self.name}: {err}; nothing was installed. Run again, or put "
                f"{self.describe(data_dir)} in place by hand"
            ) from err
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return f"installed in {final}"


@dataclass(frozen=True)
class MnistRecipe:
    """MNIST has its own verified, offline-capable chain (see `domainbed.downloads.mnist_files`)."""

    name: str = "MNIST"

    def describe(self, data_dir: Path) -> str:
        return f"{raw_dir(data_dir)}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte"

    def install(self, data_dir: Path, timeout: float) -> str:
        try:
            ensure_mnist(data_dir)
        except MnistUnavailable as err:
            raise DownloadError(f"MNIST: {err}") from err
        return f"verified in {raw_dir(data_dir)}"


_DOMAINNET = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
_LILA = "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps/"
_CODALAB = "https://worksheets.codalab.org/rest/bundles/{}/contents/blob/"

RECIPES: dict[str, Recipe | MnistRecipe] = {
    "MNIST": MnistRecipe(),
    "VLCS": Recipe(
        "VLCS",
        LAYOUTS["VLCS"],
        (Fetch(gdrive("1skwblH1_okBwxWxmRsp9_qi15hyPpxg8"), "VLCS.tar.gz"),),
    ),
    "PACS": Recipe(
        "PACS",
        LAYOUTS["PACS"],
        (Fetch(gdrive("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"), "PACS.zip"), Rename("kfold", "PACS")),
    ),
    "OfficeHome": Recipe(
        "OfficeHome",
        LAYOUTS["OfficeHome"],
        (
            Fetch(gdrive("1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"), "office_home.zip"),
            Rename("OfficeHomeDataset_10072016", "office_home"),
        ),
    ),
    "TerraIncognita": Recipe(
        "TerraIncognita",
        LAYOUTS["TerraIncognita"],
        (
            Fetch(_LILA + "eccv_18_all_images_sm.tar.gz", "images.tar.gz", into="terra_incognita"),
            Fetch(_LILA + "eccv_18_annotations.tar.gz", "annotations.tar.gz", "terra_incognita"),
            SortCameraTraps(
                base="terra_incognita",
                images="eccv_18_all_images_sm",
                annotations="eccv_18_annotation_files",
                annotation_files=(
                    "cis_test_annotations.json",
                    "cis_val_annotations.json",
                    "train_annotations.json",
                    "trans_test_annotations.json",
                    "trans_val_annotations.json",
                ),
                locations=("38", "46", "100", "43"),
                categories=tuple(
                    "bird bobcat cat coyote dog empty opossum rabbit raccoon squirrel".split()
                ),
            ),
        ),
    ),
    "DomainNet": Recipe(
        "DomainNet",
        LAYOUTS["DomainNet"],
        (
            Fetch(_DOMAINNET + "groundtruth/clipart.zip", "clipart.zip", into="domain_net"),
            Fetch(_DOMAINNET + "infograph.zip", "infograph.zip", into="domain_net"),
            Fetch(_DOMAINNET + "groundtruth/painting.zip", "painting.zip", into="domain_net"),
            Fetch(_DOMAINNET + "quickdraw.zip", "quickdraw.zip", into="domain_net"),
            Fetch(_DOMAINNET + "real.zip", "real.zip", into="domain_net"),
            Fetch(_DOMAINNET + "sketch.zip", "sketch.zip", into="domain_net"),
            # The public DomainBed drops images that occur in more than one domain.
            Fetch(
                "https://raw.githubusercontent.com/facebookresearch/DomainBed/"
                "8ff97a7b159eda90ad2171eac5f6c8988d31a285/domainbed/misc/domain_net_duplicates.txt",
                "duplicates.txt",
                md5="adc7b54410f8d1c5c201ae1605e553b5",
                unpack=False,
            ),
            RemoveListed("duplicates.txt", base="domain_net"),
        ),
    ),
    "WILDSCamelyon": Recipe(
        "WILDSCamelyon",
        LAYOUTS["WILDSCamelyon"],
        (
            Fetch(
                _CODALAB.format("0xe45e15f39fb54e9d9e919556af67aabe"),
                "archive.tar.gz",
                into="camelyon17_v1.0",
            ),
        ),
    ),
    "WILDSFMoW": Recipe(
        "WILDSFMoW",
        LAYOUTS["WILDSFMoW"],
        (
            Fetch(
                _CODALAB.format("0xaec91eb7c9d548ebb15e1b5e60f966ab"),
                "archive.tar.gz",
                into="fmow_v1.1",
            ),
        ),
    ),
}

# Dataset class names that share another entry's files.
ALIASES = {"RotatedMNIST": "MNIST", "ColoredMNIST": "MNIST"}
