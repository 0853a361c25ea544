"""H u = v by Hessian-vector products: CG against Neumann on check_hypergrad's real problems,
batched systems against separate solves, and the guard rails (Neumann restarts, CG at negative
curvature, warm starts, automatic alpha)."""

from __future__ import annotations

import argparse

import pytest
import torch

from domainbed_itl.meta.hypergrad import exact_hypergradient, implicit_hypergradient
from domainbed_itl.meta.hypergrad_study import (
    PROBLEMS,
    Problem,
    hessian_spectrum,
    load_mnist_small,
)
from domainbed_itl.meta.linear_solve import (
    MAX_RESTARTS,
    SolverSettings,
    Space,
    conjugate_gradient,
    neumann,
    parse_alpha,
    solve,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _spd(n: int, eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(eigenvalues.double()) @ q.T


def _matrix_hvp(matrices: torch.Tensor):
    """HVP of one matrix (n x n) on [x (n,)] or of a stack (K x n x n) on [x (K, n)]."""
    if matrices.dim() == 2:
        return lambda x: [matrices @ x[0]]
    return lambda x: [torch.einsum("kij,kj->ki", matrices, x[0])]


@pytest.mark.parametrize("name", ["logreg", pytest.param("mlp", marks=pytest.mark.slow)])
def test_cg_beats_neumann_at_equal_hvps_on_check_hypergrads_problems(mnist_dir, name):
    """At the optimum of the real 7x7-MNIST problems, CG's hypergradient is closer to the exact
    implicit gradient than Neumann's with its best step (1 / lambda_max) at the same number of
    Hessian-vector products."""
    problem = Problem(load_mnist_small(str(mnist_dir), 100, 100), PROBLEMS[name], 1e-2, 0)
    theta = problem.solve(problem.w)
    lam_max, lam_min = hessian_spectrum(problem, theta)
    assert lam_min > 0
    truth = exact_hypergradient(theta, problem.w, problem.train_loss, problem.val_loss)
    for hvps in (5, 15):
        estimates = {
            solver: implicit_hypergradient(theta, problem.w, problem.train_loss,
                                           problem.val_loss, 1.0 / lam_max, hvps, solver=solver)
            for solver in ("neumann", "cg")
        }
        errors = {s: float((hg.grad - truth).norm() / truth.norm()) for s, hg in estimates.items()}
        assert all(hg.hvps == hvps for hg in estimates.values())
        assert errors["cg"] < errors["neumann"], (hvps, errors)
    assert errors["cg"] < 0.1  # at J = 15 CG has (nearly) converged; Neumann has not


@pytest.mark.parametrize("solver", ["neumann", "cg"])
def test_stacked_systems_are_solved_as_if_alone(solver):
    eigs = [torch.linspace(0.5, 4.0, 12), torch.linspace(0.1, 1.0, 12), torch.linspace(1, 60, 12)]
    matrices = torch.stack([_spd(12, e, seed) for seed, e in enumerate(eigs)])
    v = torch.randn(3, 12, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    settings = SolverSettings(solver, 10, 0.05)
    stacked = solve(_matrix_hvp(matrices), [v], settings, Space(batched=True))
    for k in range(3):
        alone = solve(_matrix_hvp(matrices[k]), [v[k]], settings, Space())
        torch.testing.assert_close(stacked.u[0][k], alone.u[0])
        torch.testing.assert_close(stacked.residual[k], alone.residual)
        assert int(stacked.restarts[k]) == int(alone.restarts)
    # alpha 0.05 is too large for the third system (lambda_max 60): it alone restarted.
    if solver == "neumann":
        assert stacked.restarts.tolist()[:2] == [0, 0] and stacked.restarts[2] >= 1


def test_diverging_neumann_series_restarts_with_smaller_alpha():
    a = _spd(20, torch.linspace(1.0, 300.0, 20), 0)
    v = torch.randn(20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sol = neumann(_matrix_hvp(a), [v], torch.tensor(0.01, dtype=torch.float64), 30, Space())
    # alpha * lambda_max = 3 diverges (|1 - 3| > 1); halved, 1.5 converges (|1 - 1.5| < 1).
    assert int(sol.restarts) == 1 and float(sol.alpha) == pytest.approx(0.005)
    assert float(sol.residual) < 1.0 and sol.hvps > 30
    exact = torch.linalg.solve(a, v)
    assert torch.isfinite(sol.u[0]).all()
    assert torch.nn.functional.cosine_similarity(sol.u[0], exact, dim=0) > 0.5
    # Hopeless (negative curvature): restarts are capped, the residual says so.
    bad = -a
    capped = neumann(_matrix_hvp(bad), [v], torch.tensor(0.01, dtype=torch.float64), 5, Space())
    assert int(capped.restarts) == MAX_RESTARTS and float(capped.residual) > 1.0


def test_auto_alpha_is_one_over_the_top_eigenvalue():
    a = _spd(15, torch.cat([torch.linspace(0.2, 2.0, 14), torch.tensor([8.0])]), 3)
    v = torch.randn(15, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sol = solve(_matrix_hvp(a), [v], SolverSettings("neumann", 15, "auto"), Space())
    assert float(sol.alpha) == pytest.approx(1 / 8.0, rel=0.05)
    assert sol.hvps == 15 + 10 and int(sol.restarts) == 0


def test_cg_stops_at_negative_curvature_and_damping_restores_it():
    eigs = torch.cat([torch.tensor([-0.5]), torch.linspace(1.0, 3.0, 9)])
    a = _spd(10, eigs, 5)
    v = torch.ones(10, dtype=torch.float64)
    sol = conjugate_gradient(_matrix_hvp(a), [v], 0.0, 10, Space())
    assert torch.isfinite(sol.u[0]).all()
    damped = conjugate_gradient(_matrix_hvp(a), [v], 1.0, 10, Space())
    assert int(damped.restarts) == 0 and float(damped.residual) < 1e-8
    torch.testing.assert_close(damped.u[0], torch.linalg.solve(a + torch.eye(10), v))
    if int(sol.restarts) == 0:  # CG may never meet the negative direction on this v
        assert float(sol.residual) < 1e-6


def test_cg_warm_start_is_rescaled_and_a_useless_one_costs_one_hvp():
    a = _spd(30, torch.linspace(0.01, 1.0, 30), 6)
    v = torch.randn(30, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    exact = torch.linalg.solve(a, v)
    warm = conjugate_gradient(_matrix_hvp(a), [v], 0.0, 1, Space(), start=[3.0 * exact])
    torch.testing.assert_close(warm.u[0], exact)  # c = 1/3 recovered from one HVP
    assert warm.hvps == 1
    zero = conjugate_gradient(_matrix_hvp(a), [v], 0.0, 8, Space(), start=[torch.zeros(30)])
    cold = conjugate_gradient(_matrix_hvp(a), [v], 0.0, 7, Space())
    torch.testing.assert_close(zero.u[0], cold.u[0])


def test_parse_alpha_and_settings_validation():
    assert parse_alpha("auto") == "auto" and parse_alpha("0.5") == 0.5
    for bad in ("0", "-1", "nan", "fast"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive number or 'auto'"):
            parse_alpha(bad)
    with pytest.raises(ValueError, match="unknown solver"):
        SolverSettings("lbfgs")
