"""Evaluation costs what the numbers need and no more: the figures' screening solve, density
grids pooled from finer ones, and p_t grids solved once a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genlab import plots
from genlab.figures import FLOOR_NATS, RunFigures
from genlab.models.flow import SCREEN_TOLERANCE
from genlab.runner import build
from tests.conftest import tiny_overrides


def test_pooling_a_grid_keeps_its_mass_and_its_empty_cells():
    rng = np.random.default_rng(0)
    log_q = rng.normal(size=(8, 8)) - 3.0
    log_q[:2, :2] = -np.inf  # one coarse cell with no mass at all
    log_q[2, 2] = -np.inf  # and one with a part of it
    pooled = plots.pool_log_density(log_q, 2)
    assert pooled.shape == (4, 4)
    # every cell has the same area: the mean density over the square is kept
    np.testing.assert_allclose(np.exp(pooled).mean(), np.exp(log_q).mean(), rtol=1e-12)
    np.testing.assert_allclose(np.exp(pooled[1, 1]), np.exp(log_q[2:4, 2:4]).mean(), rtol=1e-12)
    assert pooled[0, 0] == -np.inf and np.isfinite(pooled[1:, 1:]).all()
    assert plots.pool_log_density(log_q, 1) is log_q
    with pytest.raises(ValueError, match="cannot pool a \\(8, 8\\) grid by 3"):
        plots.pool_log_density(log_q, 3)


@pytest.fixture
def flow(compose_cfg, tmp_path):
    """An untrained rectified flow at its shipped solvers (its field is near zero, so its
    density is near the prior's)."""
    torch.manual_seed(0)
    cfg = compose_cfg(["model=rectified_flow", "data=moons", "eval.grid=16"])
    _, model, _, _ = build(cfg, tmp_path / "run")
    return model.eval().requires_grad_(False)


def test_the_screen_solves_exactly_every_point_a_figure_can_show(flow):
    x = torch.tensor([[0.0, 0.0], [1.0, -0.5], [2.0, 2.0], [12.0, 0.0], [0.0, -15.0]])
    floor = -math.log(8.0**2) - FLOOR_NATS  # moons' square, as the figures set it
    exact = flow.log_prob(x)
    shown = flow.figure_log_prob(x, floor=floor)
    near = exact > floor
    assert near[:3].all() and not near[3:].any()  # the far points lie far below any colour
    # the likelihood solve of those points (the same solve; the batch sets the adaptive steps)
    torch.testing.assert_close(shown[near], flow.log_prob(x[near]), rtol=0, atol=0)
    torch.testing.assert_close(shown[near], exact[near], rtol=0, atol=1e-4)
    assert (shown[~near] <= floor).all()
    torch.testing.assert_close(flow.figure_log_prob(x), exact, rtol=0, atol=0)  # no floor
    assert SCREEN_TOLERANCE > flow.likelihood.rtol  # the screen is the cheaper solve


def test_a_point_whose_screening_path_runs_off_is_empty_and_spares_the_others(flow):
    """Far outside the data a field that was never trained there can send a point to
    infinity on its way back to the noise: the screen gives that point -inf instead of
    failing the whole grid, and the points a figure shows keep their exact log-density."""

    class RunsOff(torch.nn.Module):  # v = -x (|x| - 5) beyond |x| = 5: runs off backwards
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))  # the model's device and dtype

        def forward(self, t, x):
            return -x * (x.abs() - 5.0).clamp(min=0.0) + 0 * self.anchor

    flow.velocity = RunsOff()
    flow.ema = None
    x = torch.tensor([[0.0, 0.0], [1.0, -0.5], [6.0, 0.0], [5.5, 5.5]])
    floor = -math.log(8.0**2) - FLOOR_NATS
    screen = flow.likelihood.replace(atol=SCREEN_TOLERANCE, rtol=SCREEN_TOLERANCE)
    with pytest.raises(RuntimeError, match="ODE solve"):
        flow.log_prob(x, solver=screen)  # the screen without its box
    shown = flow.figure_log_prob(x, floor=floor)
    assert torch.isneginf(shown[2:]).all()
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(x[:2]).sum(-1)  # v = 0 inside |x| <= 5
    torch.testing.assert_close(shown[:2], prior.to(shown.dtype), rtol=0, atol=1e-5)


def test_a_run_solves_each_p_t_grid_once(compose_cfg, tmp_path, monkeypatch):
    """density.png's grid gives the t=1 snapshot, and the snapshots give flow.gif's frames at
    their times: only the other times are solved."""
    cfg = compose_cfg([*tiny_overrides("rectified_flow"), "eval.grid=32"])
    toy, model, _, _ = build(cfg, tmp_path / "run")
    model.eval().requires_grad_(False)
    solved = []
    real = model.figure_log_prob

    def counted(x, floor=None, t=1.0):
        solved.append((round(t, 6), len(x)))
        return real(x, floor=floor, t=t)

    monkeypatch.setattr(model, "figure_log_prob", counted)
    for name in ("plot_samples", "plot_density", "plot_trajectories", "plot_density_snapshots"):
        monkeypatch.setattr(plots, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(plots, "animate_flow", lambda *args, **kwargs: None)
    (tmp_path / "run").mkdir()
    figures = RunFigures(model, toy, tmp_path / "run", seed=0, grid=32, animate=True)
    figures.final(1, [], 0.1)
    points = {}
    for t, n in solved:
        points[t] = points.get(t, 0) + n
    assert points[1.0] == 32 * 32  # density.png only: the snapshot at t=1 is pooled from it
    for t in (0.25, 0.5, 0.75):  # the snapshots (16 a side); flow.gif's frames pooled
        assert points[t] == 16 * 16
    gif_only = [t for t in points if t not in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert gif_only and all(points[t] == 8 * 8 for t in gif_only)  # flow.gif's other keys


def test_a_toys_entropy_and_grid_are_computed_once_a_process(monkeypatch):
    from genlab.configs import get_toy
    from genlab.data import base
    from genlab.figures import truth_grid

    first = get_toy("moons")
    h = first.entropy()
    calls = []
    monkeypatch.setattr(base, "_midpoints", lambda *a: calls.append(a))  # would recompute
    assert get_toy("moons").entropy() == h and not calls  # another instance, the same toy
    grid = truth_grid(first, 16)
    assert truth_grid(get_toy("moons"), 16) is grid and not grid.flags.writeable
    other = get_toy("moons")
    other.noise = 0.2  # a toy defined otherwise shares nothing
    assert other._cache_key() != first._cache_key()
