"""PCGrad gradient surgery against vectors projected by hand."""

from __future__ import annotations

import pytest
import torch

from domainbed_itl.meta.surgery import aggregate, pcgrad


def test_conflicting_pair_is_projected_onto_each_others_normal_plane():
    # g1 . g2 = -1 < 0.  g1' = g1 - (-1 / |g2|^2) g2 = (1, 0) + 0.5 (-1, 1) = (0.5, 0.5);
    # g2' = g2 - (-1 / |g1|^2) g1 = (-1, 1) + (1, 0) = (0, 1).
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    mean = pcgrad(grads, torch.Generator().manual_seed(0))
    total = pcgrad(grads, torch.Generator().manual_seed(0), reduction="sum")
    torch.testing.assert_close(mean, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(total, torch.tensor([0.5, 1.5]))
    # The plain mean would have been (0, 0.5): surgery changed the direction.
    torch.testing.assert_close(aggregate(grads, "mean"), torch.tensor([0.0, 0.5]))


def test_non_conflicting_gradients_are_left_alone():
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])  # all pairwise dots >= 0
    torch.testing.assert_close(pcgrad(grads), grads.mean(0))
    torch.testing.assert_close(aggregate(grads, "pcgrad"), grads.mean(0))


def test_only_the_conflicting_pair_changes_among_three():
    # g3 is orthogonal to g1 and agrees with g2, so only (g1, g2) conflict, in any order:
    # g1' = (0.5, 0.5), g2' = (0, 1), g3' = g3 = (0, 1); mean = (1/6, 5/6).
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 1.0]])
    for seed in range(4):
        out = pcgrad(grads, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out, torch.tensor([1.0 / 6.0, 5.0 / 6.0]))


def test_order_dependent_case_is_reproducible_and_matches_one_hand_order():
    # Every pair conflicts; g1's result depends on whether g2 or g3 is visited first.
    g1, g2, g3 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.5]), torch.tensor([-0.2, -1.0])
    grads = torch.stack([g1, g2, g3])

    def project(g: torch.Tensor, order: list[torch.Tensor]) -> torch.Tensor:
        for other in order:
            dot = float(g @ other)
            if dot < 0:
                g = g - dot / float(other @ other) * other
        return g

    firsts = {tuple(round(v, 6) for v in project(g1, o).tolist()) for o in ([g2, g3], [g3, g2])}
    assert len(firsts) == 2  # the order really matters here
    sums = [
        project(g1, o1) + project(g2, o2) + project(g3, o3)
        for o1 in ([g2, g3], [g3, g2])
        for o2 in ([g1, g3], [g3, g1])
        for o3 in ([g1, g2], [g2, g1])
    ]
    for seed in range(6):
        a = pcgrad(grads, torch.Generator().manual_seed(seed), reduction="sum")
        b = pcgrad(grads, torch.Generator().manual_seed(seed), reduction="sum")
        torch.testing.assert_close(a, b)
        assert any(torch.allclose(a, s, atol=1e-6) for s in sums)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(torch.ones(2, 3), "median")
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        pcgrad(torch.ones(3))
