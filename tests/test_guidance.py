"""Conditional flows on labelled toys and classifier-free guidance: the guided field and its
exact divergence, the conditional sampler at w=0, class-wise OT pairs, and one labelled run."""

import json

import pytest
import torch

from genlab.configs import compose_config
from genlab.data import EightGaussians
from genlab.errors import ConfigError
from genlab.models import Diffusion, RectifiedFlow
from genlab.models.diffusion import VPSchedule
from genlab.models.flow import Guided
from genlab.models.rectified_flow import class_ot_pairing, ot_pairing
from genlab.nn import TimeMLP
from genlab.ode import Solver
from genlab.plots import grid_points
from genlab.runner import build
from genlab.sampling import Sampler
from tests.conftest import tiny_overrides
from tests.test_cli import run_cli


def conditional_flow(classes=8, coupling="independent", **sampler):
    torch.manual_seed(0)
    velocity = TimeMLP(dim=2, hidden=16, depth=2, activation="silu", classes=classes)
    return RectifiedFlow(
        velocity,
        Sampler(**{"method": "midpoint", "steps": 4, **sampler}),
        Solver("dopri5", atol=1e-7, rtol=1e-7),
        ema=0.0,
        coupling=coupling,
        classes=classes,
    )


def conditional_diffusion(classes=4, method="ancestral", steps=12):
    torch.manual_seed(0)
    network = TimeMLP(dim=2, hidden=16, depth=2, activation="silu", classes=classes).double()
    sampler = Sampler(method, steps=steps, atol=1e-7, rtol=1e-7)
    likelihood = Solver("dopri5", atol=1e-7, rtol=1e-7)
    return Diffusion(network, VPSchedule(), sampler, likelihood, ema=0.0, classes=classes)


class GuidedNetwork(torch.nn.Module):
    """A conditional network's classifier-free guided output for fixed classes, as the plain
    network of an unconditional diffusion: ``n_null + (1 + w) (n_y - n_null)``."""

    def __init__(self, network, y, w):
        super().__init__()
        self.network, self.y, self.w = network, y, w

    def forward(self, c, x):
        cond, uncond = self.network(c, x, self.y), self.network(c, x, None)
        return uncond + (1 + self.w) * (cond - uncond)


@pytest.mark.parametrize("method", ["ancestral", "ddim", "dpmpp_2m", "heun", "sde", "euler"])
@pytest.mark.parametrize("w", [0.0, 2.0])
def test_guided_diffusion_samples_as_the_guided_network_would_unconditionally(method, w):
    """Every diffusion sampler given classes and guidance ``w`` draws, from the same noise,
    the samples of an unconditional diffusion whose network is the guided combination: the
    guidance acts on the network's output, which the noise, the velocity and the score
    carry affinely with weights summing to one."""
    model = conditional_diffusion(method=method)
    y = torch.arange(40) % 4
    plain = Diffusion(
        GuidedNetwork(model.velocity.network, y, w), VPSchedule(), model.sampler, Solver(), ema=0
    )
    drawn = model.sample(40, torch.Generator().manual_seed(6), y=y, guidance=w)
    expected = plain.sample(40, torch.Generator().manual_seed(6))
    assert torch.allclose(drawn, expected, atol=1e-10), (drawn - expected).abs().max()
    assert not torch.allclose(drawn, model.sample(40, torch.Generator().manual_seed(6)))


def test_conditional_diffusion_densities_integrate_to_one_and_training_drops_labels():
    model = conditional_diffusion(classes=2)
    pts = grid_points(6.0, 100)
    area = (12.0 / 100) ** 2
    for k in (0, 1):
        with torch.no_grad():
            mass = model.log_prob(pts, y=torch.full((len(pts),), k)).exp().sum().item() * area
        assert abs(mass - 1) < 2e-3, (k, mass)
    seen = []
    model.velocity.network.register_forward_pre_hook(lambda _, args: seen.append(args[2]))
    torch.manual_seed(7)
    model.loss(torch.zeros(20_000, 2, dtype=torch.float64), torch.ones(20_000, dtype=torch.long))
    assert abs((seen[0] == 2).double().mean().item() - 0.1) < 0.01
    assert set(seen[0].tolist()) == {1, 2}
    with pytest.raises(ValueError, match="a conditional diffusion trains on labelled data"):
        model.loss(torch.zeros(4, 2, dtype=torch.float64))


def test_the_guided_field_combines_the_two_fields_and_its_jacobian_is_exact():
    model = conditional_flow()
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    field = model.velocity.double()
    y = torch.tensor([0, 1, 2, 3, 4, 5, 7])
    t = torch.full((7,), 0.3, dtype=torch.float64)
    assert torch.equal(Guided(field, y, 0.0)(t, x), field(t, x, y))
    w = 2.5
    cond, uncond = field(t, x, y), field(t, x, None)
    assert torch.allclose(Guided(field, y, w)(t, x), uncond + (1 + w) * (cond - uncond))
    v, jac = Guided(field, y, w).forward_with_jacobian(t, x)
    autograd = torch.func.vmap(
        torch.func.jacrev(lambda xi, yi: Guided(field, yi[None], w)(t[:1], xi[None])[0]),
    )(x, y)
    assert torch.allclose(v, Guided(field, y, w)(t, x))
    assert torch.allclose(jac, autograd, atol=1e-12)


def test_guidance_zero_is_the_conditional_sampler_and_the_null_class_the_unconditional_one():
    model = conditional_flow()
    g = torch.Generator().manual_seed(1)
    z = model._noise(100, torch.Generator().manual_seed(1))
    drawn = model.sample(100, g, y=3, guidance=0.0)
    assert torch.equal(drawn, model.push(z, y=3))
    assert torch.equal(drawn, model.push(z, y=torch.full((100,), 3)))
    assert not torch.equal(
        drawn, model.sample(100, torch.Generator().manual_seed(1), y=3, guidance=2.0)
    )
    assert torch.equal(model.sample(100, torch.Generator().manual_seed(1)), model.push(z))


def test_classes_are_split_with_the_points_when_a_request_is_chunked():
    model = conditional_flow()
    y = torch.arange(300) % 8
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(2))
    whole = model.log_prob(x, y=y)
    drawn = model.sample(300, torch.Generator().manual_seed(3), y=y, guidance=1.0)
    model.chunk = 64
    assert torch.allclose(model.log_prob(x, y=y), whole, atol=1e-6)
    assert torch.allclose(
        model.sample(300, torch.Generator().manual_seed(3), y=y, guidance=1.0), drawn
    )
    with pytest.raises(ValueError, match="299 classes for 300 points"):
        model.log_prob(x, y=y[:299])


def test_each_class_density_of_a_conditional_flow_integrates_to_one():
    model = conditional_flow()
    pts = grid_points(6.0, 120).float()
    area = (12.0 / 120) ** 2
    for k in (0, 5):
        mass = model.log_prob(pts, y=torch.full((len(pts),), k)).exp().sum().item() * area
        assert abs(mass - 1) < 2e-3, (k, mass)


def test_bad_classes_are_refused_naming_them():
    model = conditional_flow()
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"class 9 of rectified_flow: its classes are 0..7"):
        model.log_prob(x, y=torch.tensor([0, 9, 1, 1]))
    with pytest.raises(ValueError, match="trains on labelled data"):
        model.loss(x)
    with pytest.raises(ValueError, match="not conditional"):
        conditional_flow(classes=0).sample(4, y=1)
    with pytest.raises(ValueError, match="the flow has classes=8, its velocity classes=0"):
        RectifiedFlow(TimeMLP(dim=2), Sampler(), Solver("dopri5"), classes=8)


def test_class_ot_pairs_within_each_class_and_plain_ot_across_them():
    g = torch.Generator().manual_seed(4)
    x1, y = EightGaussians().sample_labelled(256, g)
    x0 = torch.randn(256, 2, generator=g)
    paired = class_ot_pairing(x0, x1, y)
    for k in range(8):
        rows = y == k
        # the class's own noise rows, reordered by the OT of the class alone
        assert torch.equal(paired[rows], ot_pairing(x0[rows], x1[rows]))
    plain = ot_pairing(x0, x1)
    # plain OT gives each class the noise nearest it: one class's noise sits far off centre
    mean_norm = lambda noise: torch.stack([noise[y == k].mean(0) for k in range(8)]).norm(dim=1)  # noqa: E731
    assert mean_norm(plain).min() > 0.6
    assert mean_norm(paired).max() < 0.4


def test_label_dropout_trains_the_null_class_on_its_share_of_rows():
    model = conditional_flow()
    seen = []
    model.pair_loss = lambda x0, x1, y=None: seen.append(y) or x0.sum()
    torch.manual_seed(5)
    model.loss(torch.zeros(20_000, 2), torch.zeros(20_000, dtype=torch.long))
    assert abs((seen[0] == 8).double().mean().item() - 0.1) < 0.01
    assert set(seen[0].tolist()) == {0, 8}


def test_conditional_runs_are_refused_where_there_is_nothing_to_condition(tmp_path):
    cases = [
        ("rectified_flow", "swissroll", "swissroll has no classes; toys with classes: .*moons"),
        ("cnf", "8gaussians", "CNF takes no classes; conditional models: diffusion, rectified_"),
    ]
    for model, data, message in cases:
        cfg = compose_config(tiny_overrides(model, data) + ["conditional=true"])
        with pytest.raises(ConfigError, match=f"conditional=true: {message}"):
            build(cfg, tmp_path / "run")
    cfg = compose_config(tiny_overrides("rectified_flow", "moons") + ["model.classes=8"])
    with pytest.raises(ConfigError, match="model.classes=8, but moons has 2 classes"):
        build(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_conditional_diffusion_run_gives_its_network_the_toys_classes(tmp_path):
    cfg = compose_config(tiny_overrides("diffusion", "pinwheel") + ["conditional=true"])
    _, model, _, _ = build(cfg, tmp_path / "run")
    assert model.classes == 5 and model.velocity.network.classes == 5
    x, y = torch.zeros(6, 2), torch.arange(6) % 5
    assert model.loss(x, y).isfinite() and model.log_prob(x, y=y).shape == (6,)


def test_cli_conditional_run_scores_each_class_and_draws_guidance(tmp_path):
    run = tmp_path / "run"
    run_cli(run, tiny_overrides("rectified_flow", "8gaussians") + ["conditional=true"])
    m = json.loads((run / "metrics.json").read_text())
    for key in ("kl", "class_kl", "class_kl_se", "class_test_entropy", "class_kl_7"):
        assert isinstance(m[key], float), key
    assert all(f"guided_ce_w{w}" in m for w in (0, 1, 3))
    assert (run / "guidance.png").exists()
    config = json.loads(json.dumps(torch.load(run / "model.pt", weights_only=False)["config"]))
    assert config["model"]["classes"] == 8 and config["model"]["velocity"]["classes"] == 8


def test_the_report_gives_conditional_runs_their_own_table():
    from genlab.report import conditional_markdown

    run = {"data": "checkerboard", "model": "rectified_flow (conditional)", "classes": 2}
    run.update(class_kl=0.2, class_kl_se=0.01, class_kl_0=0.1, class_kl_1=0.3)
    run.update(class_test_entropy=1.386, guided_ce_w0=1.4, guided_off_w1=0.02, guided_off_w3=0.1)
    text = conditional_markdown([run, {"data": "moons", "model": "nice", "kl": 0.1}])
    assert (
        "| checkerboard | rectified_flow (conditional) | 0.200 ± 0.010 | [0.100, 0.300] |" in text
    )
    assert "| 1.386 | 1.400 | ∞ (2% off) | ∞ (10% off) |" in text
    assert "moons" not in text
    assert conditional_markdown([{"data": "moons", "model": "nice", "kl": 0.1}]) == ""
