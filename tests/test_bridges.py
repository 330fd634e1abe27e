"""Transport from any source distribution: the source group, its exact density in log_prob,
the known optimal map between two Gaussians, and one run from a toy to another."""

import json

import pytest
import torch
from hydra.utils import instantiate

from genlab.configs import compose_config, data_options, get_toy, options
from genlab.data import Gaussian, Moons
from genlab.errors import ConfigError
from genlab.models import RectifiedFlow
from genlab.nn import TimeMLP
from genlab.ode import Solver
from genlab.runner import build
from genlab.sampling import Sampler
from tests.test_cli import run_cli
from tests.conftest import tiny_overrides


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
    run_cli(run, tiny_overrides("rectified_flow", "moons") + ["source=8gaussians"])
    m = json.loads((run / "metrics.json").read_text())
    assert (m["model"], m["source"], m["data"]) == ("rectified_flow", "8gaussians", "moons")
    assert m["kl"] == m["kl"] and m["w2"] > 0
    assert (run / "trajectories.png").exists() and (run / "density_t.png").exists()
