"""The algorithms: every one trains and predicts on the debug datasets, and the parts that
define each method (masks, penalties, weights, alternation) match independent computations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed import hparams_registry
from domainbed.algorithms import ALGORITHMS, get_algorithm_class
from domainbed.algorithms.alignment import coral_distance, gaussian_mmd
from domainbed.algorithms.mixup import random_domain_pairs
from domainbed.algorithms.sagnet import randomize
from domainbed.datasets import get_dataset_class

OURS = ["ERM", "CORAL", "MMD", "DANN", "CDANN", "SagNet", "RSC", "Mixup", "GroupDRO", "IRM",
        "VREx"]


def make(name: str, dataset: str = "Debug28", per_domain: int = 8, **overrides):
    """An algorithm for `dataset` (default hparams, ResNets from random weights) and a batch
    of `per_domain` examples from each of its environments."""
    torch.manual_seed(0)
    hparams = hparams_registry.default_hparams(name, dataset)
    hparams.update(pretrained=False, **overrides)
    data = get_dataset_class(dataset)(None, [], hparams)
    minibatches = [env[:per_domain] for env in data]
    algorithm = get_algorithm_class(name)(data.input_shape, data.num_classes, len(data), hparams)
    return algorithm, minibatches, data.num_classes


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in module.named_parameters() if not torch.equal(v, before[k])}


def check_trains_and_predicts(name: str, dataset: str, per_domain: int, **overrides) -> None:
    algorithm, minibatches, num_classes = make(name, dataset, per_domain, **overrides)
    before = snapshot(algorithm)
    for _ in range(2):  # two steps: DANN and CDANN alternate generator and discriminator
        result = algorithm.update(minibatches)
        assert np.isfinite(result["loss"])
        assert all(np.isfinite(v) for v in result.values())
    assert changed(algorithm, before)
    x = minibatches[0][0]
    algorithm.eval()
    with torch.no_grad():
        logits = algorithm.predict(x)
    assert logits.shape == (len(x), num_classes)
    assert torch.isfinite(logits).all()


def test_every_algorithm_is_registered():
    assert set(OURS) <= set(ALGORITHMS)
    for name in OURS:
        assert get_algorithm_class(name).__name__ == name


@pytest.mark.parametrize("name", OURS)
def test_trains_and_predicts_on_small_images(name):
    check_trains_and_predicts(name, "Debug28", per_domain=8)


@pytest.mark.parametrize("name", OURS)
def test_trains_and_predicts_on_resnet18(name):
    check_trains_and_predicts(name, "Debug224", per_domain=2, resnet18=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", OURS)
def test_trains_and_predicts_on_resnet50(name):
    check_trains_and_predicts(name, "Debug224", per_domain=2)


def zero_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.0 * F.cross_entropy(logits, y)


@pytest.mark.parametrize("name", ["ERM", "RSC", "Mixup", "GroupDRO", "IRM", "VREx"])
def test_supervised_loss_goes_through_classification_loss(name):
    # With a loss whose gradient is zero, Adam (no weight decay) leaves every weight in place,
    # so any movement would come from a loss computed around the hook.
    algorithm, minibatches, _ = make(name)
    before = snapshot(algorithm)
    algorithm.classification_loss = zero_loss
    result = algorithm.update(minibatches)
    assert result["loss"] == 0.0
    assert not changed(algorithm, before)


def test_erm_reports_the_overridden_loss_before_the_step():
    algorithm, minibatches, _ = make("ERM")
    x = torch.cat([b[0] for b in minibatches])
    y = torch.cat([b[1] for b in minibatches])
    algorithm.classification_loss = lambda logits, y: F.multi_margin_loss(logits, y)
    with torch.no_grad():
        expected = F.multi_margin_loss(algorithm.predict(x), y).item()
    assert algorithm.update(minibatches)["loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("f_drop,b_drop", [(1 / 3, 1 / 3), (0.1, 0.45)])
def test_rsc_loss_matches_numpy_percentile_masks(f_drop, b_drop):
    algorithm, minibatches, num_classes = make(
        "RSC", rsc_f_drop_factor=f_drop, rsc_b_drop_factor=b_drop)
    x = torch.cat([b[0] for b in minibatches])
    y = torch.cat([b[1] for b in minibatches])
    # Independent computation with NumPy percentiles, as the RSC paper describes it.
    feats = algorithm.featurizer(x)
    onehot = F.one_hot(y, num_classes).float()
    grads = torch.autograd.grad((algorithm.classifier(feats) * onehot).sum(), feats)[0].numpy()
    f = feats.detach().numpy()
    cut = np.percentile(grads, (1 - f_drop) * 100, axis=1)[:, None]
    mask_f = (grads < cut).astype(np.float32)
    w = algorithm.classifier.weight.detach().numpy()
    b = algorithm.classifier.bias.detach().numpy()

    def true_prob(features):
        logits = features @ w.T + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True))[np.arange(len(y)), y.numpy()]

    drop = true_prob(f) - true_prob(f * mask_f)
    mask_b = (drop < np.percentile(drop, (1 - b_drop) * 100))[:, None]
    mask = np.logical_or(mask_f, mask_b).astype(np.float32)
    logits = (f * mask) @ w.T + b
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    expected = -log_p[np.arange(len(y)), y.numpy()].mean()
    assert 0 < mask.mean() < 1
    assert algorithm.update(minibatches)["loss"] == pytest.approx(expected, rel=1e-4)


def test_irm_penalty_matches_closed_form_and_anneals():
    algorithm, minibatches, _ = make("IRM", irm_lambda=50.0, irm_penalty_anneal_iters=1)

    def closed_form():
        # d/ds CE(s * z, y) at s = 1 is the batch mean of sum_k p_k z_k - z_y.
        total = 0.0
        with torch.no_grad():
            for x, y in minibatches:
                z = algorithm.predict(x)
                g = (F.softmax(z, 1) * z).sum(1) - z.gather(1, y[:, None]).squeeze(1)
                total += (g[::2].mean() * g[1::2].mean()).item()
        return total / len(minibatches)

    expected = closed_form()
    first = algorithm.update(minibatches)
    assert first["penalty"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert first["loss"] == pytest.approx(first["nll"] + first["penalty"], rel=1e-5)
    old_optimizer = algorithm.optimizer
    second = algorithm.update(minibatches)
    assert algorithm.optimizer is not old_optimizer  # Adam restarts when the weight jumps
    assert second["loss"] == pytest.approx(second["nll"] + 50.0 * second["penalty"], rel=1e-5)


def test_vrex_penalty_is_variance_of_domain_risks():
    algorithm, minibatches, _ = make("VREx", vrex_lambda=7.0, vrex_penalty_anneal_iters=0)
    with torch.no_grad():
        risks = np.array([F.cross_entropy(algorithm.predict(x), y).item()
                          for x, y in minibatches])
    result = algorithm.update(minibatches)
    assert result["penalty"] == pytest.approx(risks.var(), rel=1e-4)
    assert result["nll"] == pytest.approx(risks.mean(), rel=1e-5)
    assert result["loss"] == pytest.approx(risks.mean() + 7.0 * risks.var(), rel=1e-5)


def test_groupdro_weights_move_towards_the_worst_domain():
    algorithm, minibatches, _ = make("GroupDRO", groupdro_eta=0.5)
    with torch.no_grad():
        risks = np.array([F.cross_entropy(algorithm.predict(x), y).item()
                          for x, y in minibatches])
    result = algorithm.update(minibatches)
    q = np.exp(0.5 * risks) / np.exp(0.5 * risks).sum()
    np.testing.assert_allclose(algorithm.q.numpy(), q, rtol=1e-5)
    assert result["loss"] == pytest.approx(float(q @ risks), rel=1e-5)
    assert algorithm.q.argmax().item() == risks.argmax()


def test_coral_distance_matches_numpy_moments():
    gen = np.random.RandomState(0)
    a, b = gen.randn(20, 5), 2 * gen.randn(30, 5) + 1
    expected = ((a.mean(0) - b.mean(0)) ** 2).mean() + \
        ((np.cov(a, rowvar=False) - np.cov(b, rowvar=False)) ** 2).mean()
    got = coral_distance(torch.tensor(a), torch.tensor(b)).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_gaussian_mmd_matches_numpy_kernel_sum():
    gen = np.random.RandomState(1)
    a, b = gen.randn(6, 3), gen.randn(7, 3) + 0.5

    def mean_kernel(u, v):
        d = ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-g * d) for g in (1e-3, 1e-2, 1e-1, 1, 10, 100, 1000)).mean()

    expected = mean_kernel(a, a) + mean_kernel(b, b) - 2 * mean_kernel(a, b)
    got = gaussian_mmd(torch.tensor(a), torch.tensor(b)).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert expected > 0


def test_dann_alternates_discriminator_and_generator_steps():
    algorithm, minibatches, _ = make("DANN", d_steps_per_g_step=2)
    kinds = []
    for _ in range(6):
        disc_before = snapshot(algorithm.discriminator)
        gen_before = snapshot(algorithm.featurizer)
        result = algorithm.update(minibatches)
        kind = "disc" if "disc_loss" in result else "gen"
        kinds.append(kind)
        assert bool(changed(algorithm.discriminator, disc_before)) == (kind == "disc")
        assert bool(changed(algorithm.featurizer, gen_before)) == (kind == "gen")
    # Update k (from 1) trains the discriminator when k mod 3 < 2.
    assert kinds == ["disc", "gen", "disc", "disc", "gen", "disc"]


def test_cdann_class_embeddings_learn_only_in_discriminator_steps():
    algorithm, minibatches, _ = make("CDANN", d_steps_per_g_step=1)
    before = snapshot(algorithm.class_embeddings)
    assert "gen_loss" in algorithm.update(minibatches)  # update 1: 1 mod 2 is not < 1
    assert not changed(algorithm.class_embeddings, before)
    assert "disc_loss" in algorithm.update(minibatches)
    assert changed(algorithm.class_embeddings, before)


def test_sagnet_randomize_swaps_style_or_content():
    torch.manual_seed(0)
    x = torch.randn(8, 16) * torch.rand(8, 1) * 3 + torch.randn(8, 1)
    content = randomize(x, "content")
    # Content swap keeps each row's statistics and takes another row's normalised pattern.
    torch.testing.assert_close(content.mean(1), x.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(content.var(1), x.var(1), rtol=1e-3, atol=1e-4)

    def standardised(t):
        return (t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True)

    # Each output row carries some input row's pattern, and not all rows kept their own.
    distance = torch.cdist(standardised(content), standardised(x))
    partner = distance.argmin(1)
    assert torch.allclose(distance.min(1).values, torch.zeros(8), atol=1e-3)
    assert sorted(partner.tolist()) == list(range(8))
    assert (partner != torch.arange(8)).any()
    style = randomize(x, "style")

    # Style swap keeps each row's normalised pattern and changes its statistics.
    torch.testing.assert_close(standardised(style), standardised(x), rtol=1e-3, atol=1e-3)
    assert not torch.allclose(style.mean(1), x.mean(1))


def test_mixup_pairs_each_domain_once_on_each_side():
    minibatches = [(torch.full((n, 1), float(i)), torch.full((n,), i)) for i, n in
                   enumerate([4, 6, 5])]
    pairs = random_domain_pairs(minibatches)
    firsts = sorted(int(p[0][1][0]) for p in pairs)
    seconds = sorted(int(p[1][1][0]) for p in pairs)
    assert firsts == seconds == [0, 1, 2]
    for (xi, yi), (xj, yj) in pairs:
        assert len(xi) == len(xj) == min(len(minibatches[int(yi[0])][0]),
                                         len(minibatches[int(yj[0])][0]))
        assert int(yi[0]) != int(yj[0])


def test_state_dict_round_trip_reproduces_predictions():
    for name in ["GroupDRO", "IRM", "DANN"]:
        algorithm, minibatches, _ = make(name)
        algorithm.update(minibatches)
        clone, _, _ = make(name)
        clone.load_state_dict(copy.deepcopy(algorithm.state_dict()))
        x = minibatches[1][0]
        algorithm.eval()
        clone.eval()
        with torch.no_grad():
            torch.testing.assert_close(clone.predict(x), algorithm.predict(x))
