"""ERM_ITL, RSC_ITL and ERM with each baseline loss, in this project's engine: registered
with their base's hyperparameters plus their loss's, trained with exactly that loss, and
driven end to end by domainbed.scripts.train with a custom itl_omega."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from domainbed import hparams_registry
from domainbed.algorithms import ALGORITHMS, get_algorithm_class
from domainbed.algorithms.algorithm import concat_minibatches
from domainbed.datasets import get_dataset_class
from domainbed_itl.algorithms.variants import LOSS_CHOICES, VARIANTS
from domainbed_itl.losses import ITL, ITL_OMEGA, TaylorLoss, get_loss

NEW = ["ERM_ITL", "RSC_ITL", "ERM_BCE", "ERM_Focal", "ERM_SCE", "ERM_GCE", "ERM_LS", "ERM_iSCE"]
LOSS_HPARAMS = {"ITL": {"itl_omega", "itl_order"}, "BCE": set(), "Focal": {"focal_gamma"},
                "SCE": {"sce_alpha", "sce_beta"}, "GCE": {"gce_q"}, "LS": {"ls_epsilon"},
                "iSCE": {"isce_alpha", "isce_beta"}}
# What each variant's loss must equal, built independently of the variants table.
EXPECTED_LOSS = {
    "ERM_ITL": lambda h: ITL(), "RSC_ITL": lambda h: ITL(), "ERM_BCE": lambda h: get_loss("bce"),
    "ERM_Focal": lambda h: get_loss("focal", gamma=h["focal_gamma"]),
    "ERM_SCE": lambda h: get_loss("sce", alpha=h["sce_alpha"], beta=h["sce_beta"]),
    "ERM_GCE": lambda h: get_loss("gce", q=h["gce_q"]),
    "ERM_LS": lambda h: get_loss("ls", epsilon=h["ls_epsilon"]),
    "ERM_iSCE": lambda h: get_loss("isce", alpha=h["isce_alpha"], beta=h["isce_beta"]),
}


def make(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    hparams = hparams_registry.random_hparams(name, "Debug28", seed) if seed else \
        hparams_registry.default_hparams(name, "Debug28")
    hparams.update(overrides)
    data = get_dataset_class("Debug28")(None, [], hparams)
    algorithm = get_algorithm_class(name)(data.input_shape, data.num_classes, len(data), hparams)
    return algorithm, [env[:8] for env in data], hparams


def test_variants_are_registered_in_order():
    assert [a for a in ALGORITHMS if "_" in a] == NEW
    assert set(VARIANTS) == set(NEW)
    for name in NEW:
        base = name.split("_")[0]
        assert issubclass(get_algorithm_class(name), get_algorithm_class(base))


@pytest.mark.parametrize("name", NEW)
def test_hparams_are_the_base_space_plus_the_loss_space(name):
    base, suffix = name.split("_")
    for seed in (0, 3):
        ours = hparams_registry._hparams(name, "RotatedMNIST", seed)
        theirs = hparams_registry._hparams(base, "RotatedMNIST", seed)
        assert set(ours) == set(theirs) | LOSS_HPARAMS[suffix]
        for key in theirs:  # the same draws as the base for a given seed
            assert ours[key] == theirs[key]


def test_random_loss_hparams_fall_in_their_documented_ranges():
    draws = [hparams_registry.random_hparams(n, "PACS", s)
             for n in ("ERM_Focal", "ERM_SCE", "ERM_GCE", "ERM_LS") for s in range(1, 30)]
    get = lambda key: [d[key] for d in draws if key in d]  # noqa: E731
    assert all(1 <= v <= 5 for v in get("focal_gamma"))
    assert all(0.01 <= v <= 10 for v in get("sce_alpha"))
    assert all(0.1 <= v <= 1 for v in get("sce_beta"))
    assert all(0.1 <= v <= 1 for v in get("gce_q"))
    assert all(0 <= v <= 0.3 for v in get("ls_epsilon"))
    assert len(set(get("focal_gamma"))) > 20  # actually searched, not fixed
    itl = hparams_registry.random_hparams("ERM_ITL", "PACS", 7)
    assert itl["itl_omega"] == list(ITL_OMEGA) and itl["itl_order"] == 4


@pytest.mark.parametrize("name", NEW)
def test_update_uses_the_variant_loss_and_predicts(name):
    algorithm, minibatches, hparams = make(name, seed=5)
    expected = EXPECTED_LOSS[name](hparams)
    x, y = concat_minibatches(minibatches)
    before = {k: v.clone() for k, v in algorithm.network.state_dict().items()}
    if name.startswith("ERM"):
        with torch.no_grad():
            loss_before = expected(algorithm.predict(x), y).item()
    result = algorithm.update(minibatches)
    assert math.isfinite(result["loss"])
    if name.startswith("ERM"):
        assert result["loss"] == pytest.approx(loss_before, rel=1e-5, abs=1e-6)
    assert any(not torch.equal(v, before[k]) for k, v in algorithm.network.state_dict().items())
    logits = torch.randn(6, 2)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    torch.testing.assert_close(algorithm.classification_loss(logits, labels),
                               expected(logits, labels))
    with torch.no_grad():
        assert algorithm.predict(x).shape == (len(x), 2)


def test_rsc_itl_scores_features_with_minus_itl():
    algorithm, _, _ = make("RSC_ITL")
    logits = torch.randn(5, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0, 0])
    torch.testing.assert_close(algorithm.saliency_objective(logits, labels),
                               -ITL()(logits, labels))
    # Plain RSC keeps scoring with the true-class logit.
    rsc, _, _ = make("RSC")
    torch.testing.assert_close(rsc.saliency_objective(logits, labels),
                               logits.gather(1, labels[:, None]).sum())


def test_itl_omega_and_order_come_from_hparams():
    omega = [0.1 * i for i in range(12)]
    algorithm, minibatches, _ = make("ERM_ITL", itl_omega=omega)
    torch.testing.assert_close(algorithm.loss_fn.omega, torch.tensor(omega))
    assert algorithm.update(minibatches)["loss"] != make("ERM_ITL")[0].update(minibatches)["loss"]
    order3 = make("ERM_ITL", itl_omega=[0.0, 0.0, -1.0, 0.5, 0, 0, 0, 0], itl_order=3)[0]
    assert isinstance(order3.loss_fn, TaylorLoss) and order3.loss_fn.order == 3
    assert "loss_fn.omega" in order3.state_dict()


@pytest.mark.parametrize("overrides,message", [
    ({"itl_omega": [0.0] * 11}, "itl_omega must be a list of 12 numbers for itl_order 4"),
    ({"itl_omega": [0.0] * 12, "itl_order": 3}, "itl_omega must be a list of 8 numbers"),
    ({"itl_omega": 0.5}, "itl_omega must be a list of 12 numbers"),
    ({"itl_omega": ["a"] * 12}, "numbers only"),
    ({"itl_order": 1}, "itl_order must be an integer >= 2"),
])
def test_bad_itl_hparams_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        make("ERM_ITL", **overrides)


def test_every_loss_choice_has_a_documented_default_that_builds():
    for choice in LOSS_CHOICES.values():
        hparams = {hp.name: hp.default for hp in choice.hparams}
        assert isinstance(choice.build(hparams), torch.nn.Module)
        for hp in choice.hparams:  # draws are JSON-serialisable (they go to results.jsonl)
            json.dumps(hp.draw(np.random.RandomState(0)))


# ---------------------------------------------------------------- train end to end


def read_records(path):
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


def train_debug28(out, algorithm: str, hparams: dict) -> list[dict]:
    from domainbed.scripts import train

    argv = ["--dataset", "Debug28", "--algorithm", algorithm, "--steps", "2",
            "--output_dir", str(out), "--skip_model_save",
            "--hparams", json.dumps({"batch_size": 8, **hparams})]
    assert train.main(argv) == 0
    return read_records(out)


def test_train_uses_the_itl_omega_given_with_hparams(tmp_path):
    """Same seed and data: only the --hparams itl_omega differs, and so does the logged loss."""
    omega = [v * 0.5 for v in ITL_OMEGA]
    default = train_debug28(tmp_path / "default", "ERM_ITL", {})
    custom = train_debug28(tmp_path / "custom", "ERM_ITL", {"itl_omega": omega})
    assert default[-1]["hparams"]["itl_omega"] == list(ITL_OMEGA)
    assert custom[-1]["hparams"]["itl_omega"] == omega
    assert custom[0]["loss"] != pytest.approx(default[0]["loss"])
    rsc = train_debug28(tmp_path / "rsc", "RSC_ITL", {"itl_omega": omega})
    assert [r["step"] for r in rsc] == [0, 1] and rsc[-1]["hparams"]["itl_omega"] == omega
    assert all(math.isfinite(r["loss"]) for r in default + custom + rsc)


@pytest.mark.parametrize("algorithm", ["ERM_ITL", "RSC_ITL"])
def test_train_on_rotated_mnist(tmp_path, mnist_dir, algorithm):
    """One step and one evaluation of all 12 splits (about 45 s per algorithm on two quiet
    cores): the evaluation of 70,000 images, not the step, is the cost."""
    from domainbed.scripts import train

    omega = [v * 0.5 for v in ITL_OMEGA]
    out = tmp_path / algorithm
    argv = ["--dataset", "RotatedMNIST", "--data_dir", str(mnist_dir), "--algorithm", algorithm,
            "--test_envs", "0", "--steps", "1", "--output_dir", str(out), "--skip_model_save",
            "--hparams", json.dumps({"itl_omega": omega})]
    assert train.main(argv) == 0
    (record,) = read_records(out)
    assert record["step"] == 0 and record["hparams"]["itl_omega"] == omega
    assert math.isfinite(record["loss"]) and (out / "done").exists()
    assert all(0 <= record[f"env{i}_{part}_acc"] <= 1 for i in range(6) for part in ("in", "out"))


def test_train_refuses_a_bad_itl_omega_in_one_line(tmp_path, capsys):
    from domainbed.scripts import train

    out = tmp_path / "run"
    argv = ["--dataset", "Debug28", "--algorithm", "ERM_ITL", "--steps", "2",
            "--output_dir", str(out), "--hparams", json.dumps({"itl_omega": [0.0] * 11})]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "itl_omega must be a list of 12 numbers" in err and "fix --hparams" in err
    assert not out.exists()


def test_the_public_hook_builds_variants_that_update_as_the_engine_does():
    """The clone's variants take the update() re-stated in public_updates: built on a clone
    whose ERM and RSC are this engine's, each makes the same two updates as the engine's
    variant, so the re-statement stays the engine's update operation for operation."""
    import types

    from domainbed import algorithms
    from domainbed_itl.algorithms import public

    clone = types.ModuleType("clone_of_domainbed.algorithms")
    clone.ALGORITHMS = ["ERM", "RSC"]
    clone.ERM, clone.RSC = algorithms.ERM, algorithms.RSC
    assert public.register_algorithms(clone) == []
    assert clone.ALGORITHMS == ["ERM", "RSC", *NEW]
    for name in NEW:
        engine_algorithm, minibatches, hparams = make(name, seed=5)
        torch.manual_seed(5)
        data = get_dataset_class("Debug28")(None, [], hparams)
        hook_algorithm = getattr(clone, name)(data.input_shape, data.num_classes, len(data),
                                              hparams)
        assert type(hook_algorithm).__module__ == clone.__name__
        hook_algorithm.load_state_dict(engine_algorithm.state_dict())
        for _ in range(2):
            torch.manual_seed(1)
            expected = engine_algorithm.update(minibatches)["loss"]
            torch.manual_seed(1)
            assert hook_algorithm.update(minibatches)["loss"] == expected, name
        for key, value in engine_algorithm.state_dict().items():
            assert torch.equal(hook_algorithm.state_dict()[key], value), (name, key)
