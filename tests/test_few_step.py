"""Few steps and one step: diffusion's second-order samplers against the exact probability-flow
ODE of Gaussian data, the step grids, MeanFlow and the distilled flow, and the yardstick of
models without a density."""

import math

import pytest
import torch
from torch import nn

from genlab.data import Checkerboard, Moons
from genlab.metrics import cross_entropy, evaluate, sampler_steps
from genlab.models import DistilledFlow, MeanFlow
from genlab.models.diffusion import LOG_SNR_SCALE, Diffusion, VPSchedule
from genlab.nn import TimeMLP
from genlab.ode import Solver
from genlab.sampling import SPACINGS, Sampler, step_times

MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
STD = 0.3  # Gaussian data N(MEAN, STD^2 I)


class ExactNoise(nn.Module):
    """The exact noise predictor of N(MEAN, STD^2 I) data, in the form diffusion's network takes:
    ``e_hat - sigma x`` from the network's time input ``c = log(alpha / sigma) / 4``."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1, dtype=torch.float64))  # a model has weights

    def forward(self, c, x):
        c = torch.as_tensor(c, dtype=x.dtype).reshape(-1, 1)
        a2, s2 = torch.sigmoid(2 * LOG_SNR_SCALE * c), torch.sigmoid(-2 * LOG_SNR_SCALE * c)
        e_hat = s2.sqrt() * (x - a2.sqrt() * MEAN) / (a2 * STD**2 + s2)
        return e_hat - s2.sqrt() * x


def exact_diffusion() -> Diffusion:
    sampler = Sampler("ddim", 10)
    return Diffusion(ExactNoise(), VPSchedule(), sampler, Solver("dopri5"), ema=0.0)


def exact_endpoint(model: Diffusion, z: torch.Tensor) -> torch.Tensor:
    """Where the exact probability-flow ODE takes ``z`` from t=0 to t=1: for Gaussian data the
    flow is affine, ``x_t = alpha_t m + s_t / s_0 (x_0 - alpha_0 m)``, ``s_t^2 = alpha_t^2
    STD^2 + sigma_t^2``."""
    alpha, sigma, _ = model.schedule.coefficients(torch.tensor([0.0, 1.0], dtype=torch.float64))
    spread = torch.sqrt(alpha**2 * STD**2 + sigma**2)
    return alpha[1] * MEAN + spread[1] / spread[0] * (z - alpha[0] * MEAN)


def noise(n: int = 2000) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize(
    "method,spacing,order",
    [("ddim", "uniform", 1), ("dpmpp_2m", "logsnr", 2), ("heun", "karras", 2)],
)
def test_samplers_converge_to_the_exact_ode_at_their_order(method, spacing, order):
    model, z = exact_diffusion(), noise()
    exact = exact_endpoint(model, z)
    steps = (20, 40, 80, 160)  # the asymptotic range: few-step errors are the schedule's
    errors = []
    for k in steps:
        sampler = model.sampler.replace(method=method, steps=k, spacing=spacing)
        x = model.sample_with(z, sampler, None)
        errors.append((x - exact).norm(dim=1).mean().item())
    slope = (
        -torch.linalg.lstsq(
            torch.tensor([[math.log(k), 1.0] for k in steps], dtype=torch.float64),
            torch.tensor([[math.log(e)] for e in errors], dtype=torch.float64),
        )
        .solution[0]
        .item()
    )
    assert order - 0.25 < slope < order + 0.35, (errors, slope)


@pytest.mark.parametrize(
    "method,spacing,steps,rtol", [("dpmpp_2m", "logsnr", 20, 0.03), ("heun", "logsnr", 20, 0.06)]
)
def test_second_order_samplers_get_the_mean_and_covariance_in_few_steps(
    method, spacing, steps, rtol
):
    model = exact_diffusion()
    z = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sampler = model.sampler.replace(method=method, steps=steps, spacing=spacing)
    x = model.sample_with(z, sampler, None)
    _, sigma1, _ = model.schedule.coefficients(torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(x.mean(0), MEAN, atol=0.01)
    # the model's data end is blurred by sigma(1): its variance is STD^2 + sigma(1)^2
    spread = torch.sqrt(STD**2 + sigma1**2).expand(2)
    assert torch.allclose(x.std(0), spread, rtol=rtol)
    assert abs(x.T.cov()[0, 1]) < 0.005


def test_heun_with_churn_still_samples_the_data():
    model = exact_diffusion()
    z = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    sampler = model.sampler.replace(method="heun", steps=100, churn=10.0, spacing="karras")
    x = model.sample_with(z, sampler, g)
    assert torch.allclose(x.mean(0), MEAN, atol=0.01)
    assert torch.allclose(x.std(0), torch.full((2,), STD, dtype=torch.float64), rtol=0.02)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_step_grids_span_the_models_own_times_monotonely(spacing, kind):
    schedule = VPSchedule(kind)
    times = step_times(spacing, 12, schedule.log_snr, rho=7.0)
    assert times[0] == 0.0 and times[-1] == 1.0 and len(times) == 13
    assert (times.diff() > 0).all()
    lam = schedule.log_snr(times)
    if spacing == "logsnr":  # equal steps in log-SNR
        assert torch.allclose(lam.diff(), lam.diff()[0].expand(12), rtol=1e-9)
    if spacing == "karras":  # equal steps in sigma_edm^(1/rho), sigma_edm = exp(-lambda/2)
        root = torch.exp(-lam / 2) ** (1 / 7)
        assert torch.allclose(root.diff(), root.diff()[0].expand(12), rtol=1e-9)


def test_a_spacing_that_needs_a_finite_log_snr_says_so():
    with pytest.raises(ValueError, match="finite, increasing log-SNR"):
        step_times("karras", 4, lambda t: 2 * torch.log(t / (1 - t)))
    with pytest.raises(ValueError, match="unknown spacing 'quadratic'"):
        Sampler("ddim", 4, spacing="quadratic")


def test_ode_solvers_refuse_a_spacing_they_do_not_take():
    model = exact_diffusion()
    with pytest.raises(ValueError, match="equal steps: use spacing=uniform"):
        model.sample(4, method="euler", steps=4, spacing="karras")


@pytest.mark.parametrize("method,per_step", [("ddim", 1), ("dpmpp_2m", 1), ("heun", 2)])
def test_samplers_cost_the_network_evaluations_they_state(method, per_step):
    model = exact_diffusion()
    before = model.nfe
    model.sample(7, method=method, steps=5, spacing="karras")
    assert model.nfe - before == per_step * 5
    assert sampler_steps((1, 2, 4, 10, 1000), per_step) == (
        [1, 2, 4, 10, 1000] if per_step == 1 else [1, 2, 5, 500]
    )


# MeanFlow

SMALL = {"hidden": 64, "depth": 2, "activation": "silu"}


class ExactAverage(nn.Module):
    """The exact average velocity ``u(x, t, r) = (phi_r(phi_t^-1(x)) - x) / (r - t)`` of the
    straight path from N(0, I) to N(MEAN, STD^2 I), whose ODE flow is affine:
    ``phi_t(z) = t MEAN + s_t z`` with ``s_t^2 = (1 - t)^2 + t^2 STD^2``. Its limit at
    ``r = t`` is the marginal velocity."""

    times = 2

    def forward(self, times, x):
        t, h = times[:, :1], times[:, 1:]
        r = t + h
        s_t, s_r = self.spread(t), self.spread(r)
        z = (x - t * MEAN) / s_t
        return (r * MEAN + s_r * z - x) / h

    @staticmethod
    def spread(t):
        return torch.sqrt((1 - t) ** 2 + t**2 * STD**2)


def test_meanflow_target_is_the_exact_average_velocity_for_the_exact_field():
    """The identity ``u = v + (r - t) du/dt`` that MeanFlow regresses on holds for the exact
    average velocity and marginal velocity (so the target's sign, the tangents and the
    Jacobian-vector product are right)."""
    model = MeanFlow(TimeMLP(times=2), ema=0.0)
    model.network = ExactAverage()
    g = torch.Generator().manual_seed(0)
    t = torch.rand(500, generator=g, dtype=torch.float64) * 0.8
    r = t + 0.05 + torch.rand(500, generator=g, dtype=torch.float64) * (0.95 - t)
    x = t[:, None] * MEAN + ExactAverage.spread(t)[:, None] * noise(500)
    tt = t[:, None]
    velocity = MEAN + (tt * STD**2 - (1 - tt)) / ExactAverage.spread(tt) ** 2 * (x - tt * MEAN)
    u, target = model.average_and_target(x, t, r, velocity)
    assert torch.allclose(target, u, atol=1e-9)
    # over a vanishing interval the average velocity is the instantaneous one
    u0 = model.average_velocity(x, t, t + 1e-7)
    assert torch.allclose(u0, velocity, atol=1e-5)


def train_loop(model, loss, data, steps, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        value = loss(*data())
        opt.zero_grad()
        value.backward()
        opt.step()
        schedule.step()
        model.after_step()


def gaussian_batch(n=256):
    return (MEAN.float() + STD * torch.randn(n, 2),)


def test_meanflow_one_step_samples_reach_the_data_moments():
    torch.manual_seed(0)
    model = MeanFlow(TimeMLP(times=2, **SMALL), ema=0.0, loss_power=0.0)
    train_loop(model, model.loss, gaussian_batch, 3000)
    with torch.no_grad():
        x = model.sample(20_000, torch.Generator().manual_seed(1))  # one network evaluation
    assert model.nfe == 1
    assert torch.allclose(x.mean(0), MEAN.float(), atol=0.05)
    # a short training: the one-step spread converges from below (0.25 here, 0.3 the truth)
    assert torch.allclose(x.std(0), torch.full((2,), STD), rtol=0.2)
    assert abs(x.T.cov()[0, 1]) < 0.01


def test_meanflow_refuses_a_density_and_a_one_time_network():
    model = MeanFlow(TimeMLP(times=2, **SMALL))
    with pytest.raises(NotImplementedError, match="meanflow has no density"):
        model.log_prob(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="times=2"):
        MeanFlow(TimeMLP(**SMALL))


# the distilled flow


def test_distilled_flow_reproduces_its_teachers_ode_endpoint_in_one_step():
    torch.manual_seed(0)
    solver = Solver("dopri5", atol=1e-6, rtol=1e-6)
    model = DistilledFlow(
        TimeMLP(**SMALL), Sampler("euler", 1), solver, ema=0.0, reflow_solver=solver
    )
    train_loop(model, model.loss, gaussian_batch, 800)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        teacher = model.push(z, solver=solver)  # the teacher's endpoint of its own noise
        before = (model.push(z, solver=Solver("euler", steps=1)) - teacher).norm(dim=1).mean()
    pairs = model.make_pairs(4096, torch.Generator().manual_seed(6))

    def batch():
        i = torch.randint(0, 4096, (256,))
        return pairs[0][i], pairs[1][i]

    train_loop(model, model.distill_loss, batch, 800, lr=1e-3)
    with torch.no_grad():
        one_step = model.push(z, solver=Solver("euler", steps=1))  # what sample() does
    after = (one_step - teacher).norm(dim=1).mean()
    # within 0.05 of the teacher on held-out noise (the data's spread is 0.3), and far
    # closer than the teacher's own Euler step
    assert after < 0.05 and after < before / 3, (before, after)
    assert [s.name for s in model.stages()] == ["train", "distill"]


# the yardstick without a density


class ToySampler(nn.Module):
    """A 'model' that samples a toy exactly and has no density."""

    has_density = False
    constant_log_det = False
    few_step_samplers: dict = {}
    quality_steps = ()
    name = "toy_sampler"
    nfe = None

    def __init__(self, toy, shift=0.0):
        super().__init__()
        self.toy, self.shift = toy, shift
        self.w = nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return torch.device("cpu")

    def sample(self, n, generator=None, **_):
        return (self.toy.sample(n, generator) + self.shift).float()


def test_cross_entropy_of_the_truths_own_samples_is_its_entropy():
    toy = Moons()
    out = cross_entropy(ToySampler(toy), toy, 20_000, torch.Generator().manual_seed(0))
    assert out["off_support"] == 0.0
    assert abs(out["cross_entropy"] - toy.entropy()) < 3 * out["cross_entropy_se"]
    shifted = cross_entropy(ToySampler(toy, 0.5), toy, 20_000, torch.Generator().manual_seed(0))
    assert shifted["cross_entropy"] > toy.entropy() + 0.3  # off the data: punished


def test_cross_entropy_off_the_support_is_infinite_and_says_how_much():
    toy = Checkerboard()
    out = cross_entropy(ToySampler(toy, 0.5), toy, 4000, torch.Generator().manual_seed(0))
    assert "cross_entropy" not in out  # infinite: no finite number would be right
    assert 0.2 < out["off_support"] < 0.8


def test_a_model_without_a_density_gets_no_kl_and_every_other_measure():
    toy = Moons()
    out = evaluate(ToySampler(toy), toy, seed=0, n_test=2000, n_w2=300, n_timing=100)
    assert not {"kl", "kl_se", "nll"} & set(out)
    assert {"test_entropy", "entropy", "w2", "w2_floor", "cross_entropy", "off_support"} <= set(out)
    assert out["w2"] < 1.5 * out["w2_floor"]  # the truth's own samples
