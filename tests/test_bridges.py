"""Transport from any source distribution: the source group, its exact density in log_prob,
the known optimal map between two Gaussians, and one run from a toy to another."""

import json

import pytest
import torch
from hydra.utils import instantiate
from scipy.optimize import linear_sum_assignment

from genlab.configs import compose_config, data_options, get_toy, options
from genlab.data import Gaussian, Moons
from genlab.errors import ConfigError
from genlab.models import RectifiedFlow, SchrodingerBridge
from genlab.models.bridge import sinkhorn_pairs, sinkhorn_plan
from genlab.nn import TimeMLP
from genlab.ode import Solver
from genlab.runner import build
from genlab.sampling import Sampler
from tests.conftest import tiny_overrides
from tests.test_cli import run_cli


def flow(source, hidden=16, coupling="independent", method="euler", steps=1):
    torch.manual_seed(0)
    return RectifiedFlow(
        TimeMLP(dim=2, hidden=hidden, depth=2),
        Sampler(method=method, steps=steps),
        Solver("dopri5", atol=1e-7, rtol=1e-7),
        ema=0.0,
        coupling=coupling,
        source=source,
    )


def zero_field(model):
    with torch.no_grad():
        for p in model.velocity.parameters():
            p.zero_()
    return model


def test_the_source_group_is_the_gaussian_and_every_toy_as_its_data_config_defines_it():
    assert options("source") == sorted([*data_options(), "gaussian"])
    for name in data_options():
        cfg = compose_config([f"source={name}"])
        assert repr(instantiate(cfg.source)) == repr(get_toy(name))
    cfg = compose_config(["model=rectified_flow", "source=8gaussians"])
    assert instantiate(cfg.model).source == "8gaussians"


def test_a_zero_field_keeps_the_source_exactly_in_samples_log_prob_and_reflow_pairs():
    toy = Moons()
    model = zero_field(flow(toy))
    x = toy.sample(500, torch.Generator().manual_seed(1))
    assert torch.allclose(model.log_prob(x).double(), toy.log_prob(x).double(), atol=1e-6)
    assert torch.allclose(model.log_prob(x, t=0.5).double(), toy.log_prob(x).double(), atol=1e-6)
    drawn = model.sample(300, torch.Generator().manual_seed(2))
    assert torch.equal(drawn, toy.sample(300, torch.Generator().manual_seed(2)))
    z, x1 = model.make_pairs(200, torch.Generator().manual_seed(3))
    assert torch.equal(z, toy.sample(200, torch.Generator().manual_seed(3)))
    assert torch.allclose(x1, z)
    assert model.source == "moons"
    assert flow(None).source == "gaussian"


def test_training_noise_comes_from_the_source():
    toy = Moons()
    model = flow(toy)
    seen = []
    model.pair_loss = lambda x0, x1, y=None: seen.append(x0) or x0.sum()
    model.loss(torch.zeros(4000, 2))
    on_moons = toy.log_prob(seen[0]).mean().item()
    assert abs(on_moons + 2.39) < 0.1  # minus the moons' entropy (N(0, I) noise: far lower)


def test_an_ot_coupled_flow_from_a_gaussian_learns_the_closed_form_map_to_another():
    source = Gaussian(mean=(-1.0, 0.5), std=(0.5, 1.5))
    target = Gaussian(mean=(1.0, -1.0), std=(1.2, 0.4))
    m0, s0 = torch.tensor(source.mean), torch.tensor(source.std)
    m1, s1 = torch.tensor(target.mean), torch.tensor(target.std)
    errors = {}
    for coupling in ("ot", "independent"):
        model = flow(source, hidden=32, coupling=coupling)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(800):
            opt.zero_grad()
            model.loss(target.sample(128, g)).backward()
            opt.step()
        z = source.sample(2000, torch.Generator().manual_seed(5))
        with torch.no_grad():
            one_step = model.push(z, solver=Solver("euler", steps=1))
        closed_form = m1 + s1 / s0 * (z - m0)
        errors[coupling] = (one_step - closed_form).square().sum(1).mean().sqrt().item()
    # the map moves points by 2.8 on average (RMS); minibatch OT of 128 points pairs nearly by
    # it (0.21 here), while a one-step Euler map of independent pairs, which points at the
    # mean of the data given the noise, is far from it (0.71)
    assert errors["ot"] < 0.3, errors
    assert errors["independent"] > 2 * errors["ot"], errors


def test_a_source_is_refused_where_it_would_be_ignored_or_wrong(tmp_path):
    cfg = compose_config(tiny_overrides("cnf") + ["source=moons"])
    with pytest.raises(ConfigError, match="source=moons: CNF starts from N.0, I.*rectified_flow"):
        build(cfg, tmp_path / "run")
    cfg = compose_config(tiny_overrides("rectified_flow") + ["source=moons"])
    cfg.model.sampler.method = "sde"
    with pytest.raises(ConfigError, match="sde sampler needs the Gaussian source.*moons"):
        build(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_run_from_one_toy_to_another(tmp_path):
    run = tmp_path / "run"
    # each toy with a constant of its own, which the run records and the report names
    others = ["source=8gaussians", "source.radius=3", "data.sigma=0.25"]
    run_cli(run, tiny_overrides("rectified_flow", "moons") + others)
    m = json.loads((run / "metrics.json").read_text())
    assert (m["model"], m["source"], m["data"]) == ("rectified_flow", "8gaussians", "moons")
    assert m["data_constants"] == {"sigma": 0.25} and m["source_constants"] == {"radius": 3.0}
    assert m["kl"] == m["kl"] and m["w2"] > 0
    assert m["entropy"] > get_toy("moons").entropy()  # a wider noise
    assert (run / "trajectories.png").exists() and (run / "density_t.png").exists()


# -- the Schrödinger bridge --------------------------------------------------------------


def bridge(sigma=0.5, source=None):
    torch.manual_seed(0)
    return SchrodingerBridge(
        TimeMLP(dim=2, hidden=16, depth=2, activation="silu"),
        TimeMLP(dim=2, hidden=16, depth=2, activation="silu"),
        Sampler(method="euler", steps=8),
        Solver("dopri5", atol=1e-6, rtol=1e-6),
        sigma=sigma,
        ema=0.0,
        source=source,
    )


def test_the_sinkhorn_plan_tends_to_the_ot_plan_as_the_bridge_narrows_and_to_independence():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 2, generator=g), Moons().sample(64, g)
    cost = torch.cdist(x0.double(), x1.double()).square()
    exact = torch.zeros(64, 64, dtype=torch.float64)
    _, cols = linear_sum_assignment(cost.numpy())
    exact[torch.arange(64), torch.as_tensor(cols)] = 1 / 64
    plans = {reg: sinkhorn_plan(x0, x1, reg) for reg in (0.01, 0.05, 0.5, 1e4)}
    for plan in plans.values():  # a coupling: both marginals uniform
        assert ((plan.sum(0) * 64 - 1).abs().max() < 1e-3) and (
            (plan.sum(1) * 64 - 1).abs().max() < 1e-3
        )
    tv = {reg: (plan - exact).abs().sum().item() / 2 for reg, plan in plans.items()}
    assert tv[0.01] < 0.25 and tv[0.01] < tv[0.05] < tv[0.5] < tv[1e4], tv  # towards OT
    assert (plans[1e4] * 64 * 64 - 1).abs().max() < 0.01  # independent pairs
    a, b = sinkhorn_pairs(x0, x1, 0.01, torch.Generator().manual_seed(1))
    i, j = torch.cdist(a, x0).argmin(1), torch.cdist(b, x1).argmin(1)
    assert (exact[i, j] > 0).double().mean() > 0.7  # most drawn pairs are the OT plan's


def test_the_bridge_targets_are_the_velocity_and_score_of_its_brownian_bridge():
    g = torch.Generator().manual_seed(2)
    x0, x1, z = (torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(3))
    sigma, t, h = 0.7, 0.3, 1e-6

    def path(s):
        return (1 - s) * x0 + s * x1 + sigma * (s * (1 - s)) ** 0.5 * z

    finite = (path(t + h) - path(t - h)) / (2 * h)
    root = (t * (1 - t)) ** 0.5
    u = x1 - x0 + (1 - 2 * t) / (2 * root) * sigma * z
    assert torch.allclose(finite, u, atol=1e-8)  # the conditional flow that moves each path
    # and the conditional score of N(mean_t, sigma^2 t (1 - t)) at the path's point is -z/lambda
    mean, lam = (1 - t) * x0 + t * x1, sigma * root
    score = -(path(t) - mean) / lam**2
    assert torch.allclose(lam * score + z, torch.zeros_like(z), atol=1e-12)


def test_the_bridge_sde_without_noise_is_the_euler_ode_and_log_prob_starts_from_the_source():
    toy = Moons()
    model = bridge(source=toy)
    ode = model.sample(200, torch.Generator().manual_seed(3), method="euler", steps=8)
    sde = model.sample(200, torch.Generator().manual_seed(3), method="sde", steps=8, noise=0.0)
    assert torch.allclose(ode, sde, atol=1e-6)
    assert not torch.allclose(
        ode, model.sample(200, torch.Generator().manual_seed(3), method="sde", steps=8), atol=1e-3
    )
    zero_field(model)
    x = toy.sample(300, torch.Generator().manual_seed(4))
    assert torch.allclose(model.log_prob(x).double(), toy.log_prob(x).double(), atol=1e-6)


def test_cli_run_of_a_schrodinger_bridge_between_toys_by_its_sde(tmp_path):
    run = tmp_path / "run"
    overrides = tiny_overrides("schrodinger_bridge", "moons")
    run_cli(
        run, overrides + ["source=8gaussians", "model.sampler.method=sde", "model.sampler.steps=20"]
    )
    m = json.loads((run / "metrics.json").read_text())
    assert (m["model"], m["source"], m["data"]) == ("schrodinger_bridge", "8gaussians", "moons")
    assert m["kl"] == m["kl"] and m["nfe"] == 40  # two networks a step
