"""Diffusion: the VP schedules, the closed-form Gaussian case, densities and samplers.

For Gaussian data N(mu, Sigma) the noise predictor is closed form: x_t ~ N(alpha mu, C_t) with
C_t = alpha^2 Sigma + sigma^2 I, so E[e | x_t] = sigma C_t^{-1} (x_t - alpha mu). Plugged in as
the network it makes every sampler and the likelihood checkable against exact answers.
"""

import math

import pytest
import torch
from torch import nn

from genlab.configs import get_toy
from genlab.metrics import quality_vs_steps
from genlab.models import Diffusion
from genlab.models.diffusion import COSINE_END, LOG_SNR_SCALE, ProbabilityFlow, VPSchedule
from genlab.nn import TimeMLP
from genlab.ode import Solver
from genlab.sampling import Sampler
from genlab.scores import flatten

TIGHT = Solver("dopri5", atol=1e-9, rtol=1e-9)
F64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=F64)
COV = torch.tensor([[0.6, 0.25], [0.25, 0.4]], dtype=F64)


class GaussianNoise(nn.Module):
    """The exact noise predictor of data N(mu, cov), less ``sigma x`` (what the diffusion's
    network predicts), with its Jacobian, as a function of the network's time input, the
    scaled log-SNR ``c = lambda / 8``: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)."""

    def __init__(self, mu=MU, cov=COV):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("cov", cov)
        self.dummy = nn.Parameter(torch.zeros((), dtype=F64))  # a device and a dtype

    def forward_with_jacobian(self, c, x):
        lam = 2 * LOG_SNR_SCALE * torch.as_tensor(c, dtype=x.dtype).reshape(-1)
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        eye = torch.eye(2, dtype=F64)
        cov_t = alpha[:, None, None] ** 2 * self.cov + sigma[:, None, None] ** 2 * eye
        jac = (sigma[:, None, None] * torch.linalg.inv(cov_t)).expand(len(x), 2, 2)
        e = torch.einsum("bij,bj->bi", jac, x - alpha[:, None] * self.mu)
        return e - sigma[:, None] * x + 0 * self.dummy, jac - sigma[:, None, None] * eye

    def forward(self, c, x):
        return self.forward_with_jacobian(c, x)[0]


def gaussian_model(schedule=None, method="dopri5", steps=100):
    schedule = schedule or VPSchedule()
    sampler = Sampler(method, steps=steps, atol=1e-8, rtol=1e-8)
    return Diffusion(GaussianNoise(), schedule, sampler, TIGHT, ema=0.0)


def pushed_gaussian(schedule: VPSchedule) -> torch.distributions.MultivariateNormal:
    """The model's exact density at t=1: N(0, I) at t=0 pushed through the exact probability
    flow of N(mu, cov), an affine map x1 = m1 + C1^1/2 C0^-1/2 (x0 - m0) (the C_t commute)."""
    (a0, a1), (s0, s1), _ = schedule.coefficients(torch.tensor([0.0, 1.0], dtype=F64))
    lam, u = torch.linalg.eigh(COV)
    gain = u @ torch.diag(((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2)).sqrt()) @ u.T
    mean = a1 * MU - gain @ (a0 * MU)
    return torch.distributions.MultivariateNormal(mean, gain @ gain.T)


def random_model(seed=0):
    """A randomly initialised model (float64): its network's default initialisation moves
    samples by about one unit from the prior."""
    torch.manual_seed(seed)
    net = TimeMLP(2, 16, 2, "silu").double()
    likelihood = Solver("dopri5", atol=1e-7, rtol=1e-7)
    return Diffusion(net, VPSchedule(), Sampler(atol=1e-7, rtol=1e-7), likelihood, ema=0.0)


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(
    "kind,alpha0,sigma1", [("linear", math.exp(-20.1 / 4), 0.0105), ("cosine", 0.0084, 0.0064)]
)
def test_schedule_is_variance_preserving_from_noise_to_data(kind, alpha0, sigma1):
    schedule = VPSchedule(kind)
    t = torch.linspace(0, 1, 2001, dtype=F64)
    alpha, sigma, rate = schedule.coefficients(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-14, rtol=0)
    assert (alpha.diff() > 0).all() and (sigma.diff() < 0).all() and (rate > 0).all()
    # the stated epsilons: almost pure noise at t=0, almost data at t=1
    assert alpha[0].item() == pytest.approx(alpha0, rel=2e-2) and alpha[0] < 0.01
    assert sigma[-1].item() == pytest.approx(sigma1, rel=2e-2) and 1 - alpha[-1] < 1e-4
    # lambda' is the derivative of the log-SNR lambda = log(alpha^2 / sigma^2)
    t.requires_grad_(True)
    a, s, _ = schedule.coefficients(t)
    (slope,) = torch.autograd.grad(torch.log(a**2 / s**2).sum(), t)
    assert torch.allclose(slope, rate, rtol=1e-9, atol=0)


def test_discrete_ddpm_betas_agree_with_the_continuous_schedules():
    """DDPM's 1000 betas (linear 1e-4 ... 0.02; cosine from its alpha-bar) against the schedules
    at s = i / 1000: alpha_bar_i = prod_{j <= i} (1 - beta_j) is alpha(s)^2."""
    T = 1000
    s = torch.arange(1, T + 1, dtype=F64) / T
    betas = torch.linspace(1e-4, 0.02, T, dtype=F64)
    log_bar = torch.log1p(-betas).cumsum(0)
    log_a2, _ = VPSchedule("linear").log_alpha2_and_beta(s)
    assert torch.allclose(log_bar, log_a2, rtol=1e-2, atol=2e-4)

    f = torch.cos((torch.arange(T + 1, dtype=F64) / T + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)  # Nichol & Dhariwal's clip, past COSINE_END
    log_bar = torch.log1p(-betas).cumsum(0)
    log_a2, _ = VPSchedule("cosine").log_alpha2_and_beta(s)
    inside = s <= COSINE_END
    assert torch.allclose(log_bar[inside], log_a2[inside], rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- Gaussian data
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_probability_flow_log_prob_is_the_pushed_prior_exactly(kind):
    schedule = VPSchedule(kind)
    model = gaussian_model(schedule)
    x = MU + torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        got = model.log_prob(x)
    assert torch.allclose(got, pushed_gaussian(schedule).log_prob(x), atol=1e-6, rtol=0)


def test_with_tight_ends_log_prob_is_the_gaussians_exact_log_density():
    schedule = VPSchedule("linear", eps=1e-7, beta_max=60.0)  # alpha(0) = 3e-7, sigma(1) = 1e-4
    model = gaussian_model(schedule)
    x = MU + torch.randn(40, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        got = model.log_prob(x)
    exact = torch.distributions.MultivariateNormal(MU, COV).log_prob(x)
    assert torch.allclose(got, exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "method,steps", [("dopri5", 100), ("ddim", 200), ("ancestral", 500), ("sde", 500)]
)
def test_samplers_draw_the_gaussians_mean_and_covariance(method, steps):
    model = gaussian_model(method=method, steps=steps)
    n = 10_000
    with torch.no_grad():
        x = model.sample(n, torch.Generator().manual_seed(2))
    se = COV.diagonal().sqrt() / math.sqrt(n)
    assert ((x.mean(0) - MU).abs() < 5 * se).all(), x.mean(0)
    cov_se = (COV.diagonal()[:, None] * COV.diagonal()[None, :] + COV**2).sqrt() / math.sqrt(n)
    assert ((x.T.cov() - COV).abs() < 5 * cov_se).all(), x.T.cov()


# ----------------------------------------------------------------------------- densities
def grid(bound=6.0, n=100):
    c = (torch.arange(n, dtype=F64) + 0.5) / n * 2 * bound - bound
    return torch.cartesian_prod(c, c), (2 * bound / n) ** 2


def test_density_of_a_random_model_integrates_to_one_and_matches_its_samples():
    model = random_model()
    points, cell = grid()
    with torch.no_grad():
        log_q = model.log_prob(points)
        mass = log_q.exp().sum().item() * cell
        neg_entropy = (log_q.exp() * log_q).sum().item() * cell
        x = model.sample(2000, torch.Generator().manual_seed(3))
        log_q_x = model.log_prob(x)
    assert abs(mass - 1) < 1e-2
    # E_{x ~ sample(ode)}[log q(x)] is the grid's integral of q log q, within Monte Carlo error
    assert abs(log_q_x.mean().item() - neg_entropy) < 4 * log_q_x.std().item() / math.sqrt(2000)


def test_the_divergence_is_the_trace_of_the_autograd_jacobian():
    model = random_model(seed=1)
    flow: ProbabilityFlow = model.velocity
    x = torch.randn(7, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    for t in (0.0, 0.3, 0.999, 1.0):
        tt = torch.tensor(t, dtype=F64)
        v, jac = flow.forward_with_jacobian(tt, x)
        auto = torch.stack(
            [torch.autograd.functional.jacobian(lambda y, t=tt: flow(t, y[None])[0], r) for r in x]
        )
        assert torch.allclose(v, flow(tt, x), atol=1e-12) and torch.allclose(jac, auto, atol=1e-10)


# ----------------------------------------------------------------------------- samplers
def test_ddim_and_euler_converge_to_the_same_samples():
    model = random_model(seed=2)

    def draw(**kw):
        with torch.no_grad():
            return model.sample(100, torch.Generator().manual_seed(5), **kw)

    ode = draw(method="dopri5")
    errors = {
        k: [(draw(method=m, steps=k) - ode).norm(dim=1).max().item() for m in ("ddim", "euler")]
        for k in (10, 100, 1000)
    }
    for m in (0, 1):
        assert errors[1000][m] < 0.1 * errors[10][m] and errors[1000][m] < 2e-2, errors


def test_one_ddim_step_by_hand_and_eta_one_is_ancestral():
    model = random_model(seed=3)
    g = torch.Generator().manual_seed(6)
    z = torch.randn(9, 2, generator=g, dtype=F64)
    (a0, a1), (s0, s1), _ = model.schedule.coefficients(torch.tensor([0.0, 1.0], dtype=F64))
    with torch.no_grad():
        x = model.sample(9, torch.Generator().manual_seed(6), method="ddim", steps=1)
        e_hat = model.velocity.noise(torch.tensor(0.0, dtype=F64), z)
        assert torch.allclose(x, a1 * (z - s0 * e_hat) / a0 + s1 * e_hat, atol=1e-12)
        one = model.sample(50, torch.Generator().manual_seed(7), method="ddim", eta=1.0, steps=20)
        two = model.sample(50, torch.Generator().manual_seed(7), method="ancestral", steps=20)
    assert torch.equal(one, two)


@pytest.mark.parametrize("method", ["ancestral", "sde", "ddim"])
def test_sampling_is_seeded(method):
    model = random_model(seed=4)
    with torch.no_grad():
        a = model.sample(30, torch.Generator().manual_seed(8), method=method, steps=10, eta=0.5)
        b = model.sample(30, torch.Generator().manual_seed(8), method=method, steps=10, eta=0.5)
        c = model.sample(30, torch.Generator().manual_seed(9), method=method, steps=10, eta=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_quality_vs_steps_counts_the_evaluations_of_each_sampler():
    model = random_model(seed=5)
    model.few_step_samplers = {**model.few_step_samplers, "runge_kutta": {"method": "rk4"}}
    scores = quality_vs_steps(model, get_toy("moons"), torch.Generator().manual_seed(0), 50, (1, 3))
    out = flatten(scores)
    per_step = {"ancestral": 1, "ddim": 1, "dpmpp": 1, "euler": 1, "runge_kutta": 4}
    keys = {f"{m}_{s}{k}" for m in ("w2", "nfe", "sec") for s in per_step for k in (1, 3)}
    # Heun takes two evaluations a step: it is scored at half the steps, at the others' NFE
    keys |= {f"{m}_heun1" for m in ("w2", "nfe", "sec")}
    assert out.keys() == keys
    assert all(out[f"nfe_{s}{k}"] == n * k for s, n in per_step.items() for k in (1, 3))
    assert out["nfe_heun1"] == 2 and all(out[f"sec_{s}1"] > 0 for s in per_step)


def test_loss_is_the_noise_regression_by_hand():
    seen = {}

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros((), dtype=F64))

        def forward(self, t, x):
            seen["t"], seen["x"] = t, x
            return torch.full_like(x, 0.5) + self.w  # the noise prediction is sigma x + 0.5

    schedule = VPSchedule()
    model = Diffusion(Recorder(), schedule, Sampler(), Solver(), ema=0.0)
    x1 = torch.tensor([[2.0, 4.0], [1.0, 1.0]], dtype=F64)
    torch.manual_seed(0)
    loss = model.loss(x1)
    torch.manual_seed(0)
    t, e = torch.rand(2, dtype=F64), torch.randn(2, 2, dtype=F64)
    alpha, sigma, _ = schedule.coefficients(t[:, None])
    assert torch.allclose(seen["t"], torch.log(alpha / sigma)[:, 0] / LOG_SNR_SCALE, atol=1e-14)
    assert torch.allclose(seen["x"], alpha * x1 + sigma * e, atol=1e-15)
    e_hat = sigma * seen["x"] + 0.5
    assert loss.item() == pytest.approx((e_hat - e).square().sum(-1).mean().item())


def test_bad_settings_name_the_value_and_the_choices():
    net = TimeMLP(2, 8, 1)
    with pytest.raises(
        ValueError,
        match="unknown diffusion sampler 'ddpm'; choose one of: ancestral, ddim, dpmpp_2m, heun, ",
    ):
        Diffusion(net, VPSchedule(), Sampler("ddpm"), Solver())
    with pytest.raises(
        ValueError, match="unknown schedule 'quadratic'; choose one of: linear, cosine"
    ):
        VPSchedule("quadratic")
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 0.5\), got 0"):
        VPSchedule(eps=0)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\], got 2"):
        Sampler("ddim", eta=2)
    with pytest.raises(ValueError, match="noise must be >= 0, got -1"):
        Sampler("sde", noise=-1)
    model = Diffusion(net, VPSchedule(), Sampler(), Solver())
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        model.sample(3, method="ancestral", steps=0)
