"""The import hook that registers our algorithms into a clone of the public DomainBed.

CI cannot install the public DomainBed, so each test writes a small package with the same
module shape (algorithms.py: ALGORITHMS list, globals() lookup, ERM/RSC on F.cross_entropy;
hparams_registry.py: the _hparams if-chain seeded by misc.seed_hash; scripts/train.py and a
sweep that launches train in subprocesses) and runs it in real subprocesses, with that package
first on the path, exactly as a user runs a clone.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch

from domainbed_itl import public_hook
from domainbed_itl.losses import ITL, ITL_OMEGA
from domainbed_itl.scripts import install_public_hook
from domainbed_itl.scripts.install_public_hook import PTH_NAME as PTH
from domainbed_itl.scripts.install_public_hook import PTH_TEXT

LOOKALIKE = {
    "domainbed/__init__.py": "",
    "domainbed/lib/__init__.py": "",
    "domainbed/lib/misc.py": """
        import hashlib

        def seed_hash(*args):
            return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)
    """,
    "domainbed/algorithms.py": """
        import math

        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        ALGORITHMS = ["ERM", "RSC"]

        def get_algorithm_class(algorithm_name):
            if algorithm_name not in globals():
                raise NotImplementedError("Algorithm not found: {}".format(algorithm_name))
            return globals()[algorithm_name]

        class Algorithm(nn.Module):
            def __init__(self, input_shape, num_classes, num_domains, hparams):
                super().__init__()
                self.hparams = hparams

        class ERM(Algorithm):
            def __init__(self, input_shape, num_classes, num_domains, hparams):
                super().__init__(input_shape, num_classes, num_domains, hparams)
                self.featurizer = nn.Sequential(nn.Flatten(),
                                                nn.Linear(math.prod(input_shape), 8), nn.ReLU())
                self.classifier = nn.Linear(8, num_classes)
                self.network = nn.Sequential(self.featurizer, self.classifier)
                self.optimizer = torch.optim.Adam(self.network.parameters(), lr=hparams["lr"])

            def update(self, minibatches, unlabeled=None):
                x = torch.cat([x for x, y in minibatches])
                y = torch.cat([y for x, y in minibatches])
                loss = F.cross_entropy(self.predict(x), y)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                return {"loss": loss.item()}

            def predict(self, x):
                return self.network(x)

        class RSC(ERM):
            def __init__(self, input_shape, num_classes, num_domains, hparams):
                super().__init__(input_shape, num_classes, num_domains, hparams)
                self.drop_f = (1 - hparams["rsc_f_drop_factor"]) * 100
    """,
    "domainbed/hparams_registry.py": """
        import numpy as np
        from domainbed.lib import misc

        def _hparams(algorithm, dataset, random_seed):
            hparams = {}

            def _hparam(name, default_val, random_val_fn):
                assert name not in hparams
                state = np.random.RandomState(misc.seed_hash(random_seed, name))
                hparams[name] = (default_val, random_val_fn(state))

            _hparam("nonlinear_classifier", False, lambda r: False)
            if algorithm == "RSC":
                _hparam("rsc_f_drop_factor", 1 / 3, lambda r: r.uniform(0, 0.5))
                _hparam("rsc_b_drop_factor", 1 / 3, lambda r: r.uniform(0, 0.5))
            _hparam("lr", 1e-3, lambda r: 10**r.uniform(-4.5, -2.5))
            return hparams

        def default_hparams(algorithm, dataset):
            return {a: b for a, (b, c) in _hparams(algorithm, dataset, 0).items()}

        def random_hparams(algorithm, dataset, seed):
            return {a: c for a, (b, c) in _hparams(algorithm, dataset, seed).items()}
    """,
    "domainbed/scripts/__init__.py": "",
    "domainbed/scripts/train.py": """
        import argparse
        import json

        import torch

        from domainbed import algorithms, hparams_registry

        parser = argparse.ArgumentParser()
        parser.add_argument("--algorithm", nargs="+", default=["ERM"])
        parser.add_argument("--hparams")
        parser.add_argument("--hparams_seed", type=int, default=0)
        args = parser.parse_args()
        for name in args.algorithm:
            if args.hparams_seed == 0:
                hparams = hparams_registry.default_hparams(name, "Debug28")
            else:
                hparams = hparams_registry.random_hparams(name, "Debug28", args.hparams_seed)
            if args.hparams:
                hparams.update(json.loads(args.hparams))
            cls = algorithms.get_algorithm_class(name)
            torch.manual_seed(0)
            algorithm = cls((1, 4, 4), 3, 2, hparams)
            minibatches = [(torch.randn(6, 1, 4, 4), torch.randint(0, 3, (6,))) for _ in range(2)]
            with torch.no_grad():
                logits = algorithm.predict(torch.cat([x for x, _ in minibatches]))
            losses = [algorithm.update(minibatches)["loss"] for _ in range(3)]
            omega = getattr(getattr(algorithm, "loss_fn", None), "omega", None)
            print(json.dumps({
                "class": cls.__module__ + "." + cls.__qualname__,
                "base": cls.__mro__[1].__name__,
                "algorithms": algorithms.ALGORITHMS,
                "hparams": hparams,
                "logits": logits.tolist(),
                "labels": torch.cat([y for _, y in minibatches]).tolist(),
                "losses": losses,
                "omega": None if omega is None else omega.tolist(),
            }), flush=True)
    """,
    "domainbed/scripts/sweep.py": """
        import json
        import subprocess
        import sys

        results = []
        for name in sys.argv[1:]:
            done = subprocess.run([sys.executable, "-m", "domainbed.scripts.train",
                                   "--algorithm", name], capture_output=True, text=True)
            results.append({"algorithm": name, "rc": done.returncode,
                            "out": done.stdout, "err": done.stderr[-2000:]})
        print(json.dumps(results))
    """,
}


def write_lookalike(root: Path, drop: str = "", replace: tuple[tuple[str, str], ...] = ()) -> Path:
    """Write the package; `drop` removes a class from algorithms.py, `replace` edits
    hparams_registry.py, to simulate a DomainBed our hook does not fit."""
    for rel, text in LOOKALIKE.items():
        text = textwrap.dedent(text)
        if rel.endswith("algorithms.py") and drop:
            text = text[:text.index(f"class {drop}(")]
        if rel.endswith("hparams_registry.py"):
            for old, new in replace:
                text = text.replace(old, new)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def pth_site(tmp_path: Path) -> Path:
    """A directory holding a copy of the project's .pth file, as site-packages would."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    install_public_hook.install(site_dir)
    return site_dir


def run(root: Path, module: str, args: list[str], site_dir: Path | None = None,
        **env: str) -> subprocess.CompletedProcess:
    """`python -m module args` from `root`, the way a clone is used, with the project's .pth
    line processed first (site.addsitedir) when `site_dir` is given."""
    boot = ("import runpy, site, sys\n"
            f"if {str(site_dir)!r} != 'None': site.addsitedir({str(site_dir)!r})\n"
            f"sys.argv = [{module!r}] + sys.argv[1:]\n"
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    environ = {**os.environ, "PYTHONPATH": str(root), **env}
    environ.pop("DOMAINBED_ITL_AUTOREGISTER", None)
    environ.update(env)
    return subprocess.run([sys.executable, "-c", boot, *args], cwd=root, env=environ,
                          capture_output=True, text=True, timeout=300)


def reports(done: subprocess.CompletedProcess) -> list[dict]:
    """One dict per algorithm the lookalike train ran."""
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.strip().splitlines()]


def installed_pth() -> Path | None:
    for directory in site.getsitepackages():
        if (Path(directory) / PTH).is_file():
            return Path(directory) / PTH
    return None


def test_pth_line_registers_the_variants_into_the_lookalike(tmp_path):
    root = write_lookalike(tmp_path / "clone")
    omega = [0.5 * v for v in ITL_OMEGA]
    base, focal, erm, rsc = reports(run(
        root, "domainbed.scripts.train",
        ["--algorithm", "ERM", "ERM_Focal", "ERM_ITL", "RSC_ITL", "--hparams_seed", "3",
         "--hparams", json.dumps({"itl_omega": omega})], pth_site(tmp_path)))
    assert erm["class"] == "domainbed.algorithms.ERM_ITL" and erm["base"] == "ERM"
    assert rsc["class"] == "domainbed.algorithms.RSC_ITL" and rsc["base"] == "RSC"
    assert erm["algorithms"] == ["ERM", "RSC", "ERM_ITL", "RSC_ITL", "ERM_BCE", "ERM_Focal",
                                 "ERM_SCE", "ERM_GCE", "ERM_LS", "ERM_iSCE"]
    # Hyperparameters: the clone's own draws for the clone's names, ours added.
    assert focal["hparams"]["lr"] == erm["hparams"]["lr"] == base["hparams"]["lr"] != 1e-3
    assert 1 <= focal["hparams"]["focal_gamma"] <= 5 and "focal_gamma" not in base["hparams"]
    assert erm["hparams"]["itl_order"] == 4
    assert {"rsc_f_drop_factor", "rsc_b_drop_factor"} <= set(rsc["hparams"])
    for out in (erm, rsc):
        assert out["hparams"]["itl_omega"] == omega
        torch.testing.assert_close(torch.tensor(out["omega"]), torch.tensor(omega))
        assert all(abs(v) < 1e6 for v in out["losses"])
    # ERM_ITL's first update minimises the given Taylor loss, not the clone's cross-entropy.
    expected = ITL(omega)(torch.tensor(erm["logits"]), torch.tensor(erm["labels"])).item()
    assert erm["losses"][0] == pytest.approx(expected, rel=1e-5)


def test_switched_off_by_environment(tmp_path):
    root = write_lookalike(tmp_path / "clone")
    done = run(root, "domainbed.scripts.train", ["--algorithm", "ERM", "ERM_ITL"],
               pth_site(tmp_path), DOMAINBED_ITL_AUTOREGISTER="0")
    assert done.returncode != 0 and "Algorithm not found: ERM_ITL" in done.stderr
    assert json.loads(done.stdout.splitlines()[0])["algorithms"] == ["ERM", "RSC"]


def test_a_misfit_warns_once_and_the_clone_keeps_working(tmp_path):
    """No RSC in the clone: one warning, ERM variants still there. A registry without
    `misc`: one warning, the clone's own algorithms still train."""
    root = write_lookalike(tmp_path / "no_rsc", drop="RSC")
    done = run(root, "domainbed.scripts.train", ["--algorithm", "ERM_ITL"], pth_site(tmp_path))
    (out,) = reports(done)
    assert out["base"] == "ERM" and "RSC_ITL" not in out["algorithms"]
    assert done.stderr.count("domainbed-itl:") == 1 and "lacks RSC" in done.stderr

    root = write_lookalike(tmp_path / "odd_registry", replace=(
        ("import misc", "import misc as _m"), ("misc.seed_hash", "_m.seed_hash")))
    (tmp_path / "site2").mkdir()
    install_public_hook.install(tmp_path / "site2")
    done = run(root, "domainbed.scripts.train", ["--algorithm", "ERM"], tmp_path / "site2")
    assert reports(done)[0]["class"] == "domainbed.algorithms.ERM"
    assert done.stderr.count("domainbed-itl:") == 1 and "hparams_registry" in done.stderr


def test_our_engine_is_left_to_its_plugin():
    import domainbed.algorithms

    assert domainbed.ENGINE == public_hook.OUR_ENGINE
    assert public_hook.AutoRegisterFinder().find_spec("domainbed.algorithms", None) is None
    assert domainbed.algorithms.get_algorithm_class("ERM_ITL").__module__ == \
        "domainbed_itl.algorithms.engine"


def test_install_command_writes_and_removes_the_pth_line(tmp_path, capsys):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    assert install_public_hook.main(["--site_dir", str(site_dir)]) == 0
    assert (site_dir / PTH).read_text() == PTH_TEXT
    assert install_public_hook.main(["--site_dir", str(site_dir)]) == 0  # idempotent
    assert install_public_hook.main(["--site_dir", str(site_dir), "--uninstall"]) == 0
    assert not (site_dir / PTH).exists()
    capsys.readouterr()
    assert install_public_hook.main(["--site_dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a directory" in err[0]


def test_installed_pth_matches_the_source():
    try:
        metadata.distribution("domainbed-itl")
    except metadata.PackageNotFoundError:
        pytest.skip("domainbed-itl is not installed in this interpreter")
    found = installed_pth()
    assert found is not None, (f"{PTH} is not in site-packages: run "
                               "python -m domainbed_itl.scripts.install_public_hook")
    assert found.read_text() == PTH_TEXT


@pytest.mark.slow
def test_sweep_subprocesses_get_the_algorithms_from_the_installed_pth(tmp_path):
    """No bootstrap at all: a plain interpreter of this environment, as a sweep launches it."""
    if installed_pth() is None:
        pytest.skip(f"{PTH} is not installed here (see test_installed_pth_matches_the_source)")
    root = write_lookalike(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if k != "DOMAINBED_ITL_AUTOREGISTER"}
    done = subprocess.run([sys.executable, "-m", "domainbed.scripts.sweep", "ERM_ITL", "RSC_ITL"],
                          cwd=root, env={**env, "PYTHONPATH": str(root)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for job in json.loads(done.stdout):
        assert job["rc"] == 0, job["err"]
        assert json.loads(job["out"])["class"] == f"domainbed.algorithms.{job['algorithm']}"
