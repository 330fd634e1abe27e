"""The continuous flows: rectified-flow target, closed-form Gaussian case, reflow, CNF density."""

import math

import pytest
import torch
from torch import nn

from genlab.metrics import sampling_cost
from genlab.models import CNF, RectifiedFlow
from genlab.nn import TimeMLP
from genlab.ode import Solver
from genlab.sampling import Sampler

TIGHT = Solver("dopri5", atol=1e-9, rtol=1e-9)


class GaussianVelocity(nn.Module):
    """The exact rectified-flow velocity for x0 ~ N(0, I), x1 ~ N(m, s^2 I), independent.

    x_t ~ N(t m, ((1-t)^2 + t^2 s^2) I) and v(t, x) = E[x1 - x0 | x_t = x]
    = m + c(t) / var(t) * (x - t m) with c(t) = t s^2 - (1 - t).
    """

    def __init__(self, m, s):
        super().__init__()
        self.register_buffer("m", torch.as_tensor(m, dtype=torch.float64))
        self.s = s
        self.dummy = nn.Parameter(torch.zeros(()))  # so the model has a device and a dtype

    def forward(self, t, x):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        var = (1 - t) ** 2 + t**2 * self.s**2
        c = t * self.s**2 - (1 - t)
        return self.m + c / var * (x - t * self.m) + 0 * self.dummy


def gaussian_flow(m=(1.5, -0.5), s=0.4):
    field = GaussianVelocity(m, s).double()
    return RectifiedFlow(field, TIGHT, TIGHT, ema=0.0), torch.tensor(m, dtype=torch.float64), s


def test_training_target_and_interpolation_by_hand():
    seen = {}

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, t, x):
            seen["t"], seen["x"] = t, x
            return torch.full_like(x, 0.5) + self.w

    model = RectifiedFlow(Recorder(), Solver(), Solver(), ema=0.0)
    x0 = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    x1 = torch.tensor([[2.0, 4.0], [1.0, 1.0]])
    t = torch.tensor([0.25, 0.5])
    loss = model.pair_loss(x0, x1, t)
    assert torch.equal(seen["x"], torch.tensor([[0.5, 1.0], [1.0, 0.0]]))
    assert torch.equal(seen["t"], t)
    # targets x1 - x0 = (2, 4) and (0, 2); squared errors 1.5^2 + 3.5^2 = 14.5 and 0.25 + 2.25
    assert loss.item() == pytest.approx((14.5 + 2.5) / 2)


def test_exact_gaussian_velocity_transports_noise_to_the_target():
    model, m, s = gaussian_flow()
    x = model.sample(20_000, torch.Generator().manual_seed(0))
    n = len(x)
    assert torch.allclose(x.mean(0), m, atol=5 * s / math.sqrt(n))
    var_se = s**2 * math.sqrt(2 / n)
    assert torch.allclose(x.var(0), torch.full((2,), s**2, dtype=x.dtype), atol=5 * var_se)


def test_exact_gaussian_velocity_gives_the_exact_log_density():
    model, m, s = gaussian_flow()
    x = m + s * torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = torch.distributions.Normal(m, s).log_prob(x).sum(-1)
    assert torch.allclose(model.log_prob(x).detach(), exact, atol=1e-4, rtol=0)


def test_the_score_from_the_velocity_is_the_gaussians_score():
    """x_t ~ N(t m, ((1 - t)^2 + t^2 s^2) I), so its score is -(x - t m) / var(t)."""
    model, m, s = gaussian_flow()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for t in (0.0, 0.3, 0.9):
        tt = torch.tensor(t, dtype=torch.float64)
        v, score = model.velocity_and_score(tt, x)
        var = (1 - t) ** 2 + t**2 * s**2
        assert torch.allclose(v, model.field(tt, x), atol=1e-14)
        assert torch.allclose(score, -(x - t * m) / var, atol=1e-12)


@pytest.mark.parametrize("noise", [0.5, 2.0])
def test_the_sde_sampler_keeps_the_gaussians_marginals(noise):
    model, m, s = gaussian_flow()
    n = 20_000
    x = model.sample(n, torch.Generator().manual_seed(4), method="sde", steps=500, noise=noise)
    assert torch.allclose(x.mean(0), m, atol=5 * s / math.sqrt(n))
    var_se = s**2 * math.sqrt(2 / n)
    assert torch.allclose(x.var(0), torch.full((2,), s**2, dtype=x.dtype), atol=5 * var_se)


def test_the_sde_without_noise_is_euler():
    torch.manual_seed(0)
    model = RectifiedFlow(TimeMLP(2, 16, 2, "silu").double(), Solver(), Solver(), ema=0.0)
    with torch.no_grad():
        sde = model.sample(9, torch.Generator().manual_seed(2), method="sde", steps=7, noise=0.0)
        euler = model.sample(9, torch.Generator().manual_seed(2), method="euler", steps=7)
    assert torch.allclose(sde, euler, atol=1e-12)


def test_one_euler_step_is_x0_plus_v():
    torch.manual_seed(0)
    model = RectifiedFlow(TimeMLP(2, 16, 2, "silu").double(), Solver(), Solver(), ema=0.0)
    x = model.sample(9, torch.Generator().manual_seed(2), method="euler", steps=1)
    x0 = torch.randn(9, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(x, x0 + model.velocity(torch.zeros((), dtype=torch.float64), x0))


def test_sampling_cost_times_several_draws_and_reports_the_nfe_of_one():
    flow, _, _ = gaussian_flow()
    out = sampling_cost(flow, 100, torch.Generator().manual_seed(0), method="midpoint", steps=4)
    assert out["nfe"] == 8  # 4 midpoint steps, whatever the number of timed draws
    assert out["sample_seconds"] > 0
    # the generator ends as one draw leaves it: later figures do not depend on the repeats
    one, three = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    sampling_cost(flow, 50, one, repeats=1, method="euler", steps=1)
    sampling_cost(flow, 50, three, repeats=3, method="euler", steps=1)
    assert torch.equal(one.get_state(), three.get_state())
    with pytest.raises(ValueError, match="repeats must be an int >= 1, got 0"):
        sampling_cost(flow, 50, repeats=0)


def test_trajectories_follow_the_ode_not_the_few_step_sampler():
    """A curved field sampled by one midpoint step: the samples are the midpoint's, but the
    drawn paths are the ODE's (dopri5 at the sampler's tolerances), not a straight segment."""
    field = gaussian_flow(m=(0.0, 0.0), s=3.0)[0].velocity  # x_t = x0 sqrt((1-t)^2 + 9 t^2)
    sampler = Sampler("midpoint", steps=1, atol=1e-9, rtol=1e-9)
    model = RectifiedFlow(field, sampler, TIGHT, ema=0.0)
    paths = model.trajectories(5, torch.Generator().manual_seed(0), points=9)
    z = paths[0]
    x1 = model.sample(5, torch.Generator().manual_seed(0))
    exact = model.push(z, solver=TIGHT)
    assert torch.allclose(paths[-1], exact, atol=1e-7)
    assert not torch.allclose(x1, exact, atol=1e-3)  # one midpoint step is not the ODE
    mid = (paths[0] + paths[-1]) / 2
    assert (paths[4] - mid).abs().max() > 1e-2  # the path bends: no linear interpolation


def mixture(n, generator):
    centres = torch.tensor([[2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    k = torch.randint(3, (n,), generator=generator)
    return centres[k] + 0.3 * torch.randn(n, 2, generator=generator)


def test_reflow_pairs_are_deterministic_and_a_round_straightens():
    torch.manual_seed(0)
    model = RectifiedFlow(
        TimeMLP(2, 32, 2, "silu"),
        Solver(),
        Solver(),
        ema=0.0,
        reflow_solver=Solver("rk4", steps=20),
    )
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(300):
        loss = model.loss(mixture(256, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    z, x1 = model.make_pairs(2000, torch.Generator().manual_seed(5))
    z2, x2 = model.make_pairs(2000, torch.Generator().manual_seed(5))
    assert torch.equal(z, z2) and torch.equal(x1, x2)
    before = model.straightness(z, x1)
    for _ in range(300):
        idx = torch.randint(2000, (256,), generator=g)
        loss = model.pair_loss(z[idx], x1[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.straightness(z, x1)
    assert after < 0.7 * before, (before, after)


def test_cnf_density_integrates_to_one():
    torch.manual_seed(3)
    field = TimeMLP(2, 16, 2, "tanh").double()
    model = CNF(field, Solver(), Solver(atol=1e-7, rtol=1e-7), Solver())
    n, bound = 160, 7.0
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * bound - bound
    with torch.no_grad():
        mass = model.log_prob(torch.cartesian_prod(c, c)).exp().sum().item()
    assert abs(mass * (2 * bound / n) ** 2 - 1) < 1e-2


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
@pytest.mark.parametrize("adjoint", [False, True])
def test_cnf_loss_trains_with_every_option(divergence, adjoint):
    torch.manual_seed(0)
    model = CNF(
        TimeMLP(2, 16, 2, "tanh"),
        Solver(),
        Solver(),
        Solver(atol=1e-4, rtol=1e-4, adjoint=adjoint),
        divergence=divergence,
        kinetic=0.01,
        jacobian=0.01,
    )
    x = mixture(64, torch.Generator().manual_seed(0))
    loss = model.loss(x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.nfe > 0


def test_density_at_time_zero_is_the_prior():
    model = CNF(TimeMLP(2, 8, 1), Solver(), Solver(), Solver())
    x = torch.randn(4, 2)
    assert torch.allclose(model.log_prob(x, t=0.0), model.prior.log_prob(x))


def test_bad_input():
    v = TimeMLP(2, 8, 1)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        RectifiedFlow(v, Solver(), Solver()).sample(3, method="euler", steps=0)
    with pytest.raises(ValueError, match="reflow must be an int >= 0, got -1"):
        RectifiedFlow(v, Solver(), Solver(), reflow=-1)
    with pytest.raises(ValueError, match="unknown time distribution 'beta'"):
        RectifiedFlow(v, Solver(), Solver(), time_distribution="beta")
    with pytest.raises(ValueError, match="unknown divergence 'trace'"):
        CNF(v, Solver(), Solver(), Solver(), divergence="trace")
    with pytest.raises(ValueError, match="unknown solver 'eulr'"):
        Solver("eulr")
    with pytest.raises(ValueError, match="unknown cnf sampler 'sde'; choose one of: dopri5"):
        CNF(v, Solver(), Solver(), Solver()).sample(3, method="sde")
    with pytest.raises(ValueError, match="unknown rectified_flow sampler 'ddim'; choose one"):
        RectifiedFlow(v, Sampler("ddim"), Solver())
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got 2"):
        CNF(v, Solver(), Solver(), Solver()).log_prob(torch.zeros(2, 2), t=2)


def test_ot_pairing_is_the_cheapest_permutation():
    """Minibatch OT coupling: a permutation of the noise with the least total squared cost."""
    import itertools

    from genlab.models.rectified_flow import ot_pairing

    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g) + 2.0
    paired = ot_pairing(x0, x1)
    assert sorted(map(tuple, paired.tolist())) == sorted(map(tuple, x0.tolist()))
    best = min((x1 - x0[list(p)]).square().sum().item() for p in itertools.permutations(range(6)))
    assert (x1 - paired).square().sum().item() == pytest.approx(best, rel=1e-9)
    assert (x1 - paired).square().sum() < (x1 - x0).square().sum()


# ----------------------------------------------------------------------------- EMA
def test_ema_follows_its_warm_up_formula_and_survives_a_move():
    """First update copies; then a <- d a + (1 - d) w with d = min(decay, (1+n)/(10+n)),
    checked by hand on a one-weight module; a dtype move lists the new tensors."""
    from genlab.models.flow import EMA

    net = torch.nn.Linear(1, 1, bias=False).double()
    ema, expected = EMA(net, decay=0.5), None
    for n, w in enumerate([3.0, -1.0, 2.0, 7.0]):
        net.weight.data.fill_(w)
        ema.update(net)
        d = min(0.5, (1 + n) / (10 + n))
        expected = w if n == 0 else d * expected + (1 - d) * w
        assert ema.module.weight.item() == pytest.approx(expected, abs=1e-15)
    assert int(ema.n_averaged) == 4
    assert net.weight.item() == 7.0  # the trained module is read, never written

    ema.float(), net.float()
    net.weight.data.fill_(1.0)
    ema.update(net)
    assert ema.module.weight.dtype == torch.float32
    d = min(0.5, 5 / 14)  # n = 4
    assert ema.module.weight.item() == pytest.approx(d * expected + (1 - d), rel=1e-6)


def test_ema_state_resumes_the_average_exactly():
    from genlab.models.flow import EMA

    torch.manual_seed(0)
    net = TimeMLP(2, 16, 2, "silu")
    first, second = EMA(net, 0.999), EMA(net, 0.999)
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        first.update(net)
    second.load_state_dict(first.state_dict())
    first.update(net), second.update(net)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_ema_refuses_a_decay_outside_its_range():
    from genlab.models.flow import EMA

    with pytest.raises(ValueError, match="ema decay must lie in"):
        EMA(torch.nn.Linear(1, 1), 1.0)


def test_ema_matches_torchs_averaged_model_bit_for_bit():
    """The same warm-up run through torch.optim.swa_utils.AveragedModel gives equal tensors
    (and the same state-dict keys, so checkpoints written with either load in both)."""
    from torch.optim.swa_utils import AveragedModel

    from genlab.models.flow import EMA

    def warm_up(averaged, current, n):
        d = min(0.999, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    torch.manual_seed(0)
    net = TimeMLP(2, 16, 2, "silu", fourier=4)
    ours, torchs = EMA(net, 0.999), AveragedModel(net, multi_avg_fn=warm_up, use_buffers=True)
    for _ in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ours.update(net)
        torchs.update_parameters(net)
    a, b = ours.state_dict(), torchs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_ema_copy_is_frozen_and_not_counted_as_trained_parameters():
    """metrics.json's params counts what is trained: the EMA copy is neither trained nor
    counted (it once doubled the rectified flow's and diffusion's counts)."""
    net = TimeMLP(2, 16, 2, "silu")
    model = RectifiedFlow(net, Solver(), Solver(), ema=0.999)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == sum(p.numel() for p in net.parameters())
    assert not any(p.requires_grad for p in model.ema.parameters())


def test_a_density_grid_in_bands_matches_one_solve():
    """The figures solve a grid in bands of points (faster where a grid's corners are stiff);
    every point still meets the solver's tolerance, so the bands agree with one solve."""
    from genlab import plots

    torch.manual_seed(5)
    model = RectifiedFlow(
        TimeMLP(2, 16, 2, "tanh").double(), Solver(), Solver(atol=1e-8, rtol=1e-8), ema=0.0
    )
    one = plots.grid_log_density(model.log_prob, 4.0, 30, dtype=torch.float64, chunk=10_000)
    bands = plots.grid_log_density(model.log_prob, 4.0, 30, dtype=torch.float64, chunk=70)
    assert one.shape == (30, 30)
    assert abs(one - bands).max() < 1e-5
    assert abs(one - one.mean()).max() > 0.1  # not a flat grid, where any order would agree
