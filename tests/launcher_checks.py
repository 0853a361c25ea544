"""What the cluster-launcher tests share: a small real Debug28 sweep run from the command line,
and what its job directories hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Three jobs (one per test env), two training steps of eight images each: seconds per job.
SMALL_SWEEP = [
    "--datasets", "Debug28", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "1",
    "--single_test_envs", "--data_dir", "/data", "--hparams", '{"batch_size": 8}',
    "--skip_confirmation",
]  # fmt: skip


def run_sweep(command: str, root: Path, *flags: str, env: dict[str, str | None] | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m domainbed.scripts.sweep <command> --output_dir root ...`, as users run it,
    with `env` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "domainbed.scripts.sweep", command, "--output_dir", str(root),
         *flags],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environ_with(env or {}),
        timeout=timeout,
    )


def assert_launch_refused(root: Path, flags: list[str], capsys, message: str) -> None:
    """`sweep launch` into `root` exits 2 with one line containing `message`, before it creates
    anything: bad launcher settings must not leave a half-made sweep."""
    from domainbed.scripts import sweep

    returncode = sweep.main(["launch", "--output_dir", str(root), *flags])
    err = capsys.readouterr().err
    assert returncode == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not root.exists()


def environ_with(env: dict[str, str | None]) -> dict[str, str]:
    """This process's environment with `env` added; a None value removes the variable."""
    merged = {**os.environ, **env}
    return {name: value for name, value in merged.items() if value is not None}


def job_dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def done_jobs(root: Path) -> set[str]:
    return {p.parent.name for p in root.glob("*/done")}


def training_records(root: Path) -> dict[str, list[dict]]:
    """Job directory name -> its results.jsonl records, less what may differ between two runs
    of the same job (timings, paths)."""
    records = {}
    for name in sorted(job_dirs(root)):
        lines = (root / name / "results.jsonl").read_text().splitlines()
        records[name] = [_comparable(json.loads(line)) for line in lines if line.strip()]
    return records


def _comparable(record: dict) -> dict:
    kept = {k: v for k, v in record.items() if k not in ("step_time", "args")}
    kept["args"] = {k: v for k, v in record["args"].items() if k != "output_dir"}
    return kept


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a sweep directory, say)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def fingerprint(root: Path, names) -> dict[str, tuple]:
    """Modification times of finished jobs' files: unchanged means the job did not run again."""
    return {
        name: tuple((root / name / f).stat().st_mtime_ns for f in ("done", "results.jsonl"))
        for name in names
    }
