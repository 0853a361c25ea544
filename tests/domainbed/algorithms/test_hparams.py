"""Hyperparameter spaces: deterministic per seed, the public defaults, random draws equal to
the public distribution formulas evaluated by hand with NumPy, and the rules that --hparams
overrides are checked against."""

from __future__ import annotations

import numpy as np
import pytest

from domainbed import algorithms
from domainbed.hparams_registry import (
    POSITIVE,
    Bounds,
    HParamSpace,
    InvalidHParam,
    default_hparams,
    hparam_specs,
    random_hparams,
    validate_overrides,
)
from domainbed.lib.misc import seed_hash

OURS = ["ERM", "CORAL", "MMD", "DANN", "CDANN", "SagNet", "RSC", "Mixup", "GroupDRO", "IRM",
        "VREx"]
COMMON = {"data_augmentation", "resnet18", "resnet50_augmix", "dinov2", "vit", "vit_attn_tune",
          "freeze_bn", "lars", "linear_steps", "resnet_dropout", "vit_dropout", "class_balanced",
          "nonlinear_classifier", "lr", "weight_decay", "batch_size"}
ADVERSARIAL = {"lambda": 1.0, "weight_decay_d": 0.0, "d_steps_per_g_step": 1,
               "grad_penalty": 0.0, "beta1": 0.5, "mlp_width": 256, "mlp_depth": 3,
               "mlp_dropout": 0.0}
# Each algorithm's own hyperparameters and their public defaults (small-image datasets).
OWN_DEFAULTS = {
    "ERM": {},
    "CORAL": {"mmd_gamma": 1.0},
    "MMD": {"mmd_gamma": 1.0},
    "DANN": {**ADVERSARIAL, "lr_g": 1e-3, "lr_d": 1e-3, "weight_decay_g": 0.0},
    "CDANN": {**ADVERSARIAL, "lr_g": 1e-3, "lr_d": 1e-3, "weight_decay_g": 0.0},
    "SagNet": {"sag_w_adv": 0.1},
    "RSC": {"rsc_f_drop_factor": 1 / 3, "rsc_b_drop_factor": 1 / 3},
    "Mixup": {"mixup_alpha": 0.2},
    "GroupDRO": {"groupdro_eta": 1e-2},
    "IRM": {"irm_lambda": 1e2, "irm_penalty_anneal_iters": 500},
    "VREx": {"vrex_lambda": 1e1, "vrex_penalty_anneal_iters": 500},
}


def draw(seed: int, name: str) -> np.random.RandomState:
    """The generator the public registry gives hyperparameter `name` under `seed`."""
    return np.random.RandomState(seed_hash(seed, name))


@pytest.mark.parametrize("name", OURS)
def test_spaces_have_the_public_names_and_defaults(name):
    small = default_hparams(name, "RotatedMNIST")
    assert set(small) == COMMON | set(OWN_DEFAULTS[name])
    for key, value in OWN_DEFAULTS[name].items():
        assert small[key] == value, key
    assert (small["lr"], small["weight_decay"], small["batch_size"]) == (1e-3, 0.0, 64)
    large = default_hparams(name, "PACS")
    assert (large["lr"], large["weight_decay"], large["batch_size"]) == (5e-5, 0.0, 32)


def test_adversarial_rates_depend_on_image_size():
    for name in ("DANN", "CDANN"):
        large = default_hparams(name, "OfficeHome")
        assert (large["lr_g"], large["lr_d"], large["weight_decay_g"]) == (5e-5, 5e-5, 0.0)
        assert random_hparams(name, "ColoredMNIST", 4)["weight_decay_g"] == 0.0
        assert random_hparams(name, "VLCS", 4)["weight_decay_g"] > 0.0


@pytest.mark.parametrize("name", OURS)
def test_same_seed_same_draw_other_seed_other_draw(name):
    first = random_hparams(name, "PACS", 11)
    assert random_hparams(name, "PACS", 11) == first
    other = random_hparams(name, "PACS", 12)
    assert set(other) == set(first)
    assert other["lr"] != first["lr"]
    assert other["batch_size"] != first["batch_size"] or other["weight_decay"] != \
        first["weight_decay"]


def test_common_draws_match_the_public_formulas():
    hp = random_hparams("ERM", "RotatedMNIST", 3)
    assert hp["lr"] == 10 ** draw(3, "lr").uniform(-4.5, -2.5)
    assert hp["batch_size"] == int(2 ** draw(3, "batch_size").uniform(3, 9))
    assert hp["weight_decay"] == 0.0
    assert hp["resnet_dropout"] == draw(3, "resnet_dropout").choice([0.0, 0.1, 0.5])
    hp = random_hparams("ERM", "TerraIncognita", 8)
    assert hp["lr"] == 10 ** draw(8, "lr").uniform(-5, -3.5)
    assert hp["weight_decay"] == 10 ** draw(8, "weight_decay").uniform(-6, -2)
    assert hp["batch_size"] == int(2 ** draw(8, "batch_size").uniform(3, 5.5))
    assert random_hparams("ERM", "DomainNet", 8)["batch_size"] == \
        int(2 ** draw(8, "batch_size").uniform(3, 5))


def test_algorithm_draws_match_the_public_formulas():
    dann = random_hparams("DANN", "PACS", 5)
    assert dann["lr_d"] == 10 ** draw(5, "lr_d").uniform(-5, -3.5)
    assert dann["lr_g"] == 10 ** draw(5, "lr_g").uniform(-5, -3.5)
    assert dann["weight_decay_g"] == 10 ** draw(5, "weight_decay_g").uniform(-6, -2)
    assert dann["lambda"] == 10 ** draw(5, "lambda").uniform(-2, 2)
    assert dann["d_steps_per_g_step"] == int(2 ** draw(5, "d_steps_per_g_step").uniform(0, 3))
    assert dann["mlp_depth"] == int(draw(5, "mlp_depth").choice([3, 4, 5]))
    assert dann["beta1"] == draw(5, "beta1").choice([0.0, 0.5])
    cdann = random_hparams("CDANN", "ColoredMNIST", 9)
    assert cdann["lr_g"] == 10 ** draw(9, "lr_g").uniform(-4.5, -2.5)
    assert cdann["mlp_width"] == int(2 ** draw(9, "mlp_width").uniform(6, 10))

    rsc = random_hparams("RSC", "PACS", 2)
    assert rsc["rsc_f_drop_factor"] == draw(2, "rsc_f_drop_factor").uniform(0, 0.5)
    assert rsc["rsc_b_drop_factor"] == draw(2, "rsc_b_drop_factor").uniform(0, 0.5)
    irm = random_hparams("IRM", "VLCS", 6)
    assert irm["irm_lambda"] == 10 ** draw(6, "irm_lambda").uniform(-1, 5)
    assert irm["irm_penalty_anneal_iters"] == \
        int(10 ** draw(6, "irm_penalty_anneal_iters").uniform(0, 4))
    vrex = random_hparams("VREx", "VLCS", 6)
    assert vrex["vrex_lambda"] == 10 ** draw(6, "vrex_lambda").uniform(-1, 5)
    assert random_hparams("CORAL", "PACS", 1)["mmd_gamma"] == \
        10 ** draw(1, "mmd_gamma").uniform(-1, 1)
    assert random_hparams("MMD", "PACS", 1)["mmd_gamma"] == \
        random_hparams("CORAL", "PACS", 1)["mmd_gamma"]
    assert random_hparams("SagNet", "PACS", 4)["sag_w_adv"] == \
        10 ** draw(4, "sag_w_adv").uniform(-2, 1)
    assert random_hparams("Mixup", "PACS", 4)["mixup_alpha"] == \
        10 ** draw(4, "mixup_alpha").uniform(-1, 1)
    assert random_hparams("GroupDRO", "PACS", 4)["groupdro_eta"] == \
        10 ** draw(4, "groupdro_eta").uniform(-3, -1)


def test_shared_names_draw_the_same_value_in_every_algorithm():
    # A name's draw depends only on (seed, name), so ERM and IRM runs share their lr.
    values = {random_hparams(name, "OfficeHome", 17)["lr"] for name in OURS}
    assert len(values) == 1


# --- what an override may be ----------------------------------------------------------------

ALL_ALGORITHMS = algorithms.ALGORITHMS  # ours, the ITL variants included (plugin)
DATASETS = ("RotatedMNIST", "PACS", "DomainNet")
# What the paper's sweep files pass to every algorithm (sweeps/_common.sh).
SWEEP_OVERRIDES = ({"resnet50_augmix": False, "freeze_bn": True},
                   {"resnet18": True, "resnet50_augmix": False, "freeze_bn": True})


@pytest.mark.parametrize("name", ALL_ALGORITHMS)
def test_every_default_and_draw_obeys_its_declared_rule(name):
    for dataset in DATASETS:
        specs = hparam_specs(name, dataset)
        assert set(default_hparams(name, dataset)) <= set(specs)
        validate_overrides(name, dataset, default_hparams(name, dataset))
        for seed in range(10):
            validate_overrides(name, dataset, random_hparams(name, dataset, seed))
        for overrides in SWEEP_OVERRIDES:
            validate_overrides(name, dataset, overrides)


def test_the_itl_variants_are_registered_with_their_loss_hparams():
    assert {"ERM_ITL", "RSC_ITL", "ERM_Focal", "ERM_GCE", "ERM_iSCE"} <= set(ALL_ALGORITHMS)
    learned = {"itl_omega": [0.5, -0.6, 0.01, -88.7, 208.6, -123.7, 77.5, 80, -81.8, 222.4,
                             82.3, -76.4]}
    validate_overrides("ERM_ITL", "ColoredMNIST", learned)
    validate_overrides("RSC_ITL", "PACS", {**learned, "itl_order": 4, "rsc_f_drop_factor": 0.2})
    validate_overrides("ERM_iSCE", "RotatedMNIST", {"isce_alpha": -0.3, "isce_beta": 2})


REFUSED = {
    # (algorithm, overrides): words the one-line message must hold
    "typo": ("ERM", {"lrr": 0.5}, ["'lrr'", "ERM", "did you mean 'lr'"]),
    "other algorithm's key": ("ERM", {"irm_lambda": 1.0}, ["'irm_lambda'", "ERM"]),
    "lr as a string": ("ERM", {"lr": "0.001"}, ["'lr'", "number", "'0.001'"]),
    "lr zero": ("ERM", {"lr": 0}, ["'lr'", "> 0"]),
    "batch size zero": ("ERM", {"batch_size": 0}, ["'batch_size'", "integer >= 1"]),
    "batch size negative": ("ERM", {"batch_size": -4}, ["'batch_size'", "-4"]),
    "batch size fractional": ("ERM", {"batch_size": 3.5}, ["'batch_size'", "3.5"]),
    "bool for a number": ("ERM", {"lr": True}, ["'lr'"]),
    "number for a bool": ("ERM", {"freeze_bn": 1}, ["'freeze_bn'", "true or false"]),
    "not finite": ("ERM", {"lr": float("inf")}, ["'lr'", "finite"]),
    "dropout above one": ("ERM", {"resnet_dropout": 1.5}, ["'resnet_dropout'", "[0, 1]"]),
    "adam beta of one": ("DANN", {"beta1": 1.0}, ["'beta1'", "[0, 1)"]),
    "mlp too shallow": ("CDANN", {"mlp_depth": 1}, ["'mlp_depth'", ">= 2"]),
    "omega holds text": ("ERM_ITL", {"itl_omega": [1.0, "x"]}, ["'itl_omega'", "list"]),
    "omega not a list": ("ERM_ITL", {"itl_omega": 3.0}, ["'itl_omega'", "list"]),
    "taylor order one": ("RSC_ITL", {"itl_order": 1}, ["'itl_order'", ">= 2"]),
    "gce q zero": ("ERM_GCE", {"gce_q": 0.0}, ["'gce_q'", "(0, 1]"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_override_refused_naming_the_key(case):
    algorithm, overrides, words = REFUSED[case]
    with pytest.raises(InvalidHParam) as refusal:
        validate_overrides(algorithm, "RotatedMNIST", overrides)
    message = str(refusal.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_int_accepted_for_float_and_optional_keys_stay_out_of_the_values():
    validate_overrides("ERM", "PACS", {"lr": 1, "weight_decay": 0, "pretrained": False})
    assert "pretrained" in hparam_specs("ERM", "PACS")
    assert "pretrained" not in default_hparams("ERM", "PACS")
    assert "pretrained" not in random_hparams("ERM", "PACS", 3)


def test_a_default_outside_its_own_bounds_is_a_declaration_error():
    space = HParamSpace("Mine", "PACS", 0)
    with pytest.raises(ValueError, match="'eta'"):
        space.add("eta", -1.0, lambda r: 1.0, POSITIVE)
    with pytest.raises(ValueError, match="numbers only"):
        space.add("flag", True, lambda r: True, POSITIVE)
    assert str(Bounds(0.0, 1.0, high_open=True)) == "in [0, 1)"
    assert 0.0 not in POSITIVE and 1e-9 in POSITIVE
