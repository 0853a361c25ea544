"""Switch the public-DomainBed hook on (or off) for one Python environment.

    python -m domainbed_itl.scripts.install_public_hook [--uninstall] [--site_dir DIR]

A clone of the public DomainBed has no plugin mechanism, so ERM_ITL, RSC_ITL, ... reach it
through an import hook (`domainbed_itl.public_hook`) that a `.pth` line starts in every
interpreter of the environment, the subprocesses a sweep launches included. Wheels cannot
place a file beside the packages by any supported means for editable installs, so the line is
an explicit opt-in: this command writes it into the environment's site-packages (`make venv`
runs it), and `--uninstall` removes it. Our own engine never needs it: it loads the same
algorithms through its `domainbed.plugins` entry point.
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

from domainbed.lib import atomic
from domainbed.lib.cli import OneLineParser, UsageError, command

PTH_NAME = "domainbed_itl_autoregister.pth"
# One line, as .pth files run only lines that start with "import"; any failure is one warning.
PTH_TEXT = (
    "import sys; exec(\"try:\\n import domainbed_itl.public_hook\\n"
    " domainbed_itl.public_hook.install()\\nexcept Exception as error:\\n"
    " sys.stderr.write(f'domainbed-itl: import hook not installed ({error!r})\\\\n')\")\n"
)


def default_site_dir() -> Path:
    """The running interpreter's site-packages (purelib), where pip put this project."""
    return Path(sysconfig.get_paths()["purelib"])


def install(site_dir: Path) -> Path:
    """Write the .pth line into `site_dir`; idempotent."""
    if not site_dir.is_dir():
        raise UsageError(f"{site_dir} is not a directory: give the site-packages to use")
    path = site_dir / PTH_NAME
    atomic.write_text(path, PTH_TEXT)
    return path


def uninstall(site_dir: Path) -> Path | None:
    """Remove the .pth line from `site_dir`; the path removed, or None if it was absent."""
    path = site_dir / PTH_NAME
    if not path.exists():
        return None
    path.unlink()
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uninstall", action="store_true", help="remove the hook instead")
    parser.add_argument("--site_dir", type=Path, default=None,
                        help="default: this interpreter's site-packages")
    return parser


@command("install_public_hook")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    site_dir = args.site_dir or default_site_dir()
    if args.uninstall:
        removed = uninstall(site_dir)
        print(f"removed {removed}" if removed else f"no {PTH_NAME} in {site_dir}")
    else:
        print(f"installed {install(site_dir)}: clones of the public DomainBed run from this "
              "environment now get ERM_ITL, RSC_ITL, ...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
