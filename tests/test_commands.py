"""Every command line of the project follows one error convention (domainbed.lib.cli): its
`main` is wrapped by `command`, and `--help` works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from domainbed.lib import cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("domainbed", "domainbed_itl")
# Runs on a public DomainBed clone as well, which has no domainbed.lib.cli: its `main` wraps
# the engine's path with `command` when it is called (checked below).
DISPATCHERS = {"domainbed_itl.scripts.sweep_single_source"}


def command_modules() -> list[str]:
    """Every module of the two packages that runs as a program."""
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for package in PACKAGES for path in (ROOT / package).rglob("*.py")
        if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8"))


def test_the_commands_are_found():
    modules = command_modules()
    assert {"domainbed.scripts.train", "domainbed.scripts.sweep",
            "domainbed_itl.scripts.meta_train",
            "domainbed_itl.scripts.compare_losses"} <= set(modules)


@pytest.mark.parametrize("name", [m for m in command_modules() if m not in DISPATCHERS])
def test_every_main_is_wrapped_by_command(name):
    module = __import__(name, fromlist=["main"])
    assert getattr(module.main, "command_prog", None), f"{name}.main is not wrapped by command"


def test_the_single_source_sweep_reports_bad_input_by_the_convention(capsys, tmp_path):
    from domainbed_itl.scripts import sweep_single_source

    code = sweep_single_source.main(["launch", "--datasets", "Nope", "--data_dir", "d",
                                     "--output_dir", str(tmp_path / "o"),
                                     "--command_launcher", "dummy"])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("sweep_single_source: error: unknown dataset 'Nope'")


HELP_ALL = """
import contextlib, importlib, io, json, sys
codes = {}
for name in sys.argv[1:]:
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            importlib.import_module(name).main(["--help"])
        codes[name] = None
    except SystemExit as exit:
        codes[name] = [exit.code, "usage:" in out.getvalue()]
print(json.dumps(codes))
"""


def test_help_exits_0_for_every_command():
    """One interpreter imports them all: the import of torch and friends is paid once."""
    modules = command_modules()
    result = subprocess.run([sys.executable, "-c", HELP_ALL, *modules], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    codes = json.loads(result.stdout.strip().splitlines()[-1])
    assert codes == {name: [0, True] for name in modules}


def test_failures_and_usage_errors_are_one_line_each(capsys):
    @cli.command("prog")
    def main(argv):
        raise (cli.Failure if argv == ["fail"] else cli.UsageError)("what\nhappened")

    assert main(["fail"]) == 1
    assert capsys.readouterr().err == "prog: error: what happened\n"
    assert main([]) == 2
    assert capsys.readouterr().err == "prog: error: what happened\n"
    assert main.command_prog == "prog"


def test_a_command_puts_back_the_streams_it_replaced(capsys, tmp_path):
    from domainbed.lib.misc import Tee

    @cli.command("prog")
    def main(argv):
        sys.stderr = Tee(str(tmp_path / "err.txt"), stream=sys.stderr)
        raise cli.UsageError("logged")

    stderr = sys.stderr
    assert main(None) == 2
    assert sys.stderr is stderr
    assert (tmp_path / "err.txt").read_text() == "prog: error: logged\n"
