"""The launcher registry: a launcher added by one module of its own, installed through the
`domainbed.launchers` entry point group, runs a real sweep from the command line with the
capabilities it declares; the launcher package imports nothing from the public-compatible
`domainbed.command_launchers`, which only re-exports it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from launcher_checks import SMALL_SWEEP, done_jobs, environ_with, job_dirs, run_sweep

from domainbed import command_launchers, launchers

LAUNCHERS_DIR = Path(launchers.__file__).parent

# A launcher that really runs the jobs, one after another, and notes what it was given.
RUNNING = '''
"""Runs each job's command with subprocess, one after another; notes max_parallel."""
import os
import subprocess

from domainbed.launchers import register_launcher


@register_launcher("one_file", max_parallel=True)
def run(commands, max_parallel=1):
    with open(os.environ["ONE_FILE_LOG"], "a") as log:
        log.write(f"max_parallel={max_parallel} jobs={len(commands)}\\n")
    return [c for c in commands if subprocess.run(c, shell=True).returncode != 0]
'''

# A launcher that only prints the commands: a dry run, so the sweep creates nothing for it.
PRINTING = '''
"""Prints each job's command."""
from domainbed.launchers import register_launcher


@register_launcher("one_file", dry_run=True)
def show(commands):
    for command in commands:
        print("would run:", command)
'''


def install(tmp_path: Path, source: str) -> dict[str, str]:
    """`source` as the module `one_file_launcher`, installed as a distribution whose
    `domainbed.launchers` entry point names it; the environment that finds it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "one_file_launcher.py").write_text(textwrap.dedent(source))
    dist = site / "one_file_launcher-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: one-file-launcher\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text("[domainbed.launchers]\none_file = one_file_launcher\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "ONE_FILE_LOG": str(tmp_path / "launcher.log")}


@pytest.mark.slow  # three real training jobs in new interpreters: a minute on 2 shared cores
def test_a_launcher_in_one_module_runs_a_real_sweep(tmp_path):
    env = install(tmp_path, RUNNING)
    root = tmp_path / "sweep"
    ran = run_sweep("launch", root, *SMALL_SWEEP, "--steps", "1", "--command_launcher",
                    "one_file", "--max_parallel", "2", env=env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert (tmp_path / "launcher.log").read_text() == "max_parallel=2 jobs=3\n"
    assert len(job_dirs(root)) == 3 and done_jobs(root) == job_dirs(root)


def test_a_printing_launcher_in_one_module_is_a_dry_run_with_its_own_capabilities(tmp_path):
    env = install(tmp_path, PRINTING)
    root = tmp_path / "sweep"
    shown = run_sweep("launch", root, *SMALL_SWEEP, "--command_launcher", "one_file", env=env)
    assert shown.returncode == 0, shown.stderr[-2000:]
    printed = [line for line in shown.stdout.splitlines() if line.startswith("would run:")]
    assert len(printed) == 3 and all("domainbed.scripts.train" in line for line in printed)
    assert not root.exists()

    refused = run_sweep("launch", root, *SMALL_SWEEP, "--command_launcher", "one_file",
                        "--max_parallel", "2", env=env)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.endswith("the 'one_file' launcher does not take --max_parallel")


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def test_no_launcher_module_imports_the_compatibility_module():
    paths = sorted(LAUNCHERS_DIR.glob("*.py"))
    assert {"launcher.py", "local.py", "multi_gpu.py", "dummy.py", "ray.py", "slurm.py"} <= {
        path.name for path in paths}
    for path in paths:
        assert "domainbed.command_launchers" not in _imported_modules(path), path.name
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, domainbed.launchers, domainbed.algorithms, "
         "domainbed.scripts.sweep; print('domainbed.command_launchers' in sys.modules)"],
        capture_output=True, text=True, env=environ_with({}), check=True)
    assert loaded.stdout.strip() == "False"


def test_the_compatibility_module_holds_the_package_launchers():
    assert command_launchers.REGISTRY is launchers.REGISTRY
    assert {"dummy", "local", "multi_gpu", "ray", "slurm"} <= set(launchers.REGISTRY)
    for name in ("dummy", "local", "multi_gpu"):
        assert getattr(command_launchers, f"{name}_launcher") is launchers.REGISTRY[name]
