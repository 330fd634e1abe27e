"""Every invertible layer and every discrete flow: exact inverse, log-det against autograd,
a density that integrates to one; then what is particular to splines, ActNorm and LU.

Conditioning: the layers are small (conditioners of 2 x 16 units, 4 Fourier features) and
every parameter, the zero-initialised last layers too, is moved by N(0, 0.3^2) noise, so the
maps are far from the identity yet their Jacobians stay within a few orders of magnitude of 1;
there a float64 round trip is exact to 1e-10 and a log-det to 1e-8.
"""

import math

import pytest
import torch

from genlab.models import NICE, NSF, Glow, RealNVP, spline
from genlab.models.layers import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    DiagonalScaling,
    LULinear,
    SplineCoupling,
)

SMALL = dict(hidden=16, depth=2, activation="tanh", fourier=4, fourier_scale=0.5)
LAYERS = {
    "additive": lambda: AdditiveCoupling(2, 0, **SMALL),
    "affine": lambda: AffineCoupling(2, 1, **SMALL, scale_bound=2.0),
    "spline": lambda: SplineCoupling(2, 0, **SMALL, bins=6, bound=3.0),
    "scaling": lambda: DiagonalScaling(2),
    "actnorm": lambda: ActNorm(2),
    "lu": lambda: LULinear(2),
}
FLOW_ARGS = {
    "nice": (NICE, dict(couplings=3)),
    "realnvp": (RealNVP, dict(couplings=3)),
    "glow": (Glow, dict(steps=2)),
    "nsf": (NSF, dict(couplings=3, bins=6, bound=4.0)),
}


def small_flow(name: str, **kwargs):
    cls, size = FLOW_ARGS[name]
    return lambda: cls(**SMALL, **size, **kwargs)


FLOWS = {name: small_flow(name) for name in FLOW_ARGS}


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    """Move every parameter by N(0, scale^2) noise, in float64 and eval mode."""
    torch.manual_seed(seed)  # Fourier frequencies, LU's starting rotation
    module = module().double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


@pytest.fixture
def x64():
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def jacobian_log_det(f, point: torch.Tensor) -> float:
    jac = torch.autograd.functional.jacobian(lambda p: f(p[None])[0][0], point)
    return torch.linalg.slogdet(jac).logabsdet.item()


@pytest.mark.parametrize("name", [*LAYERS, *FLOWS])
def test_inverse_is_exact_both_ways(name, x64):
    layer = randomize({**LAYERS, **FLOWS}[name], seed=1)
    x = 1.5 * x64
    y, _ = layer(x)
    assert not torch.allclose(y, x, atol=1e-3)  # the layer does something
    assert torch.allclose(layer.inverse(y), x, atol=1e-10, rtol=0)
    assert torch.allclose(layer(layer.inverse(x))[0], x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", [*LAYERS, *FLOWS])
def test_log_det_equals_autograds_slogdet(name, x64):
    layer = randomize({**LAYERS, **FLOWS}[name], seed=2)
    x = 1.5 * x64[:12]
    _, log_det = layer(x)
    assert log_det.shape == (12,)
    for point, ld in zip(x, log_det, strict=True):
        assert abs(jacobian_log_det(layer, point) - ld.item()) < 1e-8


@pytest.mark.parametrize("name", list(FLOWS))
def test_quasi_frequencies_are_one_set_for_every_seed_and_differ_by_coupling(name, x64):
    flow = small_flow(name, fourier_draw="quasi")
    torch.manual_seed(0)
    first = [m.fourier_b for m in flow().modules() if getattr(m, "fourier_b", None) is not None]
    torch.manual_seed(1)
    again = [m.fourier_b for m in flow().modules() if getattr(m, "fourier_b", None) is not None]
    assert len(first) == len(again) >= 2 and all(map(torch.equal, first, again))
    assert len(torch.unique(torch.cat(first))) == 4 * len(first)  # each coupling its own run
    model = randomize(flow, 0)
    z, _ = model.forward(x64)
    assert (model.inverse(z) - x64).abs().max() < 1e-10


@pytest.mark.parametrize("prior", ["normal", "logistic"])
@pytest.mark.parametrize("name", list(FLOWS))
def test_flow_density_integrates_to_one(name, prior):
    """A midpoint sum on [-30, 30]^2 (the logistic prior's tails reach far), with milder
    weights (N(0, 0.15^2)) so that no spline bin is too thin for a grid of 0.075."""
    flow = randomize(small_flow(name, prior=prior), seed=3, scale=0.15)
    n, bound = 800, 30.0
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * bound - bound
    with torch.no_grad():
        mass = flow.log_prob(torch.cartesian_prod(c, c)).exp().sum().item() * (2 * bound / n) ** 2
    assert abs(mass - 1) < 1e-3


@pytest.mark.parametrize("name", list(FLOWS))
def test_layer_states_push_noise_through_one_layer_at_a_time(name):
    """The first state is the prior draw, each next one a layer's inverse of the one before
    (last layer first), the last exactly ``sample``: what the animation draws."""
    flow = randomize(FLOWS[name], seed=4)
    states = flow.layer_states(9, torch.Generator().manual_seed(4))
    assert states.shape == (len(flow.layers) + 1, 9, 2)
    noise = flow.prior.sample(9, torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(states[0], noise)
    for before, after, layer in zip(states[:-1], states[1:], reversed(flow.layers), strict=True):
        assert torch.equal(after, layer.inverse(before))
    assert torch.equal(states[-1], flow.sample(9, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("name", list(FLOWS))
def test_gradients_reach_every_parameter(name, x64):
    flow = FLOWS[name]().double().train()
    flow.loss(x64).backward()
    for key, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
    assert flow.loss(x64).isfinite()


# ----------------------------------------------------------------------------- splines
BOUND = 3.0


@pytest.fixture
def theta():
    """Random parameters of 5 splines with 7 bins."""
    return torch.randn(5, 3 * 7 - 1, generator=torch.Generator().manual_seed(5)).double() * 2


def test_zero_parameters_give_the_identity():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    y, log_det = spline.rq_spline(x, torch.zeros(101, 3 * 4 - 1, dtype=torch.float64), BOUND)
    assert torch.allclose(y, x, atol=1e-14) and torch.allclose(log_det, 0 * x, atol=1e-14)


def test_splines_are_monotone(theta):
    x = torch.linspace(-BOUND - 1, BOUND + 1, 4001, dtype=torch.float64)
    for t in theta:
        y, log_det = spline.rq_spline(x, t.expand(len(x), -1), BOUND)
        assert (y.diff() > 0).all() and log_det.isfinite().all()


def test_value_and_slope_are_continuous_at_every_knot_and_both_bounds(theta):
    xk, yk, dk = spline.knots(theta, BOUND)  # (5, K + 1): the bounds are the end knots
    # just left and just right of each knot (the thinnest bins here are 0.008 wide)
    for side in (-1e-11, 1e-11):
        y, log_det = spline.rq_spline(xk + side, theta[:, None].expand(-1, xk.shape[1], -1), BOUND)
        assert torch.allclose(y, yk, atol=1e-9, rtol=0)
        assert torch.allclose(log_det, dk.log(), atol=1e-6, rtol=0)
    assert torch.equal(dk[:, 0], torch.ones(5, dtype=dk.dtype))  # the linear tails' slope
    assert torch.equal(dk[:, -1], torch.ones(5, dtype=dk.dtype))
    assert (xk[:, 0] == -BOUND).all() and (xk[:, -1] == BOUND).all()
    assert (yk[:, 0] == -BOUND).all() and (yk[:, -1] == BOUND).all()


def test_the_inverse_is_exact_at_the_knots_and_the_bounds(theta):
    xk, yk, _ = spline.knots(theta, BOUND)
    params = theta[:, None].expand(-1, xk.shape[1], -1)
    assert torch.allclose(spline.rq_spline_inverse(yk, params, BOUND), xk, atol=1e-12, rtol=0)
    assert torch.allclose(spline.rq_spline(xk, params, BOUND)[0], yk, atol=1e-12, rtol=0)


def test_inverse_round_trip_everywhere(theta):
    x = torch.linspace(-BOUND - 1, BOUND + 1, 999, dtype=torch.float64)
    for t in theta:
        params = t.expand(len(x), -1)
        y, _ = spline.rq_spline(x, params, BOUND)
        assert torch.allclose(spline.rq_spline_inverse(y, params, BOUND), x, atol=1e-10, rtol=0)


def test_the_tails_are_the_identity_with_log_det_zero(theta):
    x = torch.tensor([-9.0, -BOUND - 1e-6, BOUND + 1e-6, 9.0], dtype=torch.float64)
    y, log_det = spline.rq_spline(x, theta[0].expand(4, -1), BOUND)
    assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(4, dtype=x.dtype))
    assert torch.equal(spline.rq_spline_inverse(x, theta[0].expand(4, -1), BOUND), x)


def test_the_slope_is_the_derivative(theta):
    x = torch.linspace(-BOUND + 0.01, BOUND - 0.01, 257, dtype=torch.float64).requires_grad_()
    y, log_det = spline.rq_spline(x, theta[1].expand(len(x), -1), BOUND)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(log_det, grad.log(), atol=1e-12, rtol=0)


def test_a_bad_parameter_count_is_refused():
    with pytest.raises(ValueError, match="3K - 1 parameters"):
        spline.rq_spline(torch.zeros(3), torch.zeros(3, 7), BOUND)


# ----------------------------------------------------------------------------- ActNorm, LU
def test_actnorm_leaves_the_first_training_batch_standardised():
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(6)).double() * 3 + 1.5
    layer = ActNorm(2).double().train()
    y, log_det = layer(x)
    assert torch.allclose(y.mean(0), torch.zeros(2, dtype=x.dtype), atol=1e-12)
    assert torch.allclose(y.std(0), torch.ones(2, dtype=x.dtype), atol=1e-12)
    assert bool(layer.initialized)
    assert torch.allclose(log_det, -x.std(0).log().sum().expand(500))
    again, _ = layer(x * 5)  # a later batch is not normalised: it is trained
    assert torch.allclose(again, (5 * x + layer.loc) * layer.log_scale.exp())


def test_actnorm_in_eval_mode_or_loaded_is_not_initialised_again():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(7))
    fresh = ActNorm(2).eval()
    assert torch.equal(fresh(x)[0], x) and not bool(fresh.initialized)
    trained = ActNorm(2).train()
    trained(x)
    loaded = ActNorm(2).train()
    loaded.load_state_dict(trained.state_dict())
    assert torch.equal(loaded(x + 1)[0], trained(x + 1)[0])


def test_lu_linear_starts_as_a_rotation_with_fixed_signs():
    torch.manual_seed(8)
    layer = LULinear(2).double()
    w = layer.weight()
    assert torch.allclose(w @ w.T, torch.eye(2, dtype=w.dtype), atol=1e-6)
    assert abs(layer.log_diag.sum().item()) < 1e-6  # |det| = 1
    assert sorted(n for n, _ in layer.named_parameters()) == ["log_diag", "lower", "upper"]
    assert sum(p.numel() for p in layer.parameters()) == 4  # 1 + 1 + 2 in 2D


@pytest.mark.parametrize("start", ["fixed", "identity", "even"])
def test_lu_linear_starts_that_do_not_depend_on_the_seed(start):
    """``fixed``, ``identity`` and ``even`` give every seed the same start; ``fixed`` is a
    rotation that differs from block to block, and ``random`` draws from the global generator."""
    torch.manual_seed(11)
    a = LULinear(2, start, block=3, blocks=8).double()
    torch.manual_seed(12)
    b = LULinear(2, start, block=3, blocks=8).double()
    w = a.weight()
    assert torch.equal(w, b.weight())
    assert torch.allclose(w @ w.T, torch.eye(2, dtype=w.dtype), atol=1e-6)
    if start == "identity":
        assert torch.equal(w, torch.eye(2, dtype=w.dtype))
    elif start == "fixed":
        assert not torch.allclose(w, LULinear(2, start, block=4).double().weight())
    else:  # a proper rotation by pi / 8
        assert torch.allclose(w[1, 0], torch.tensor(math.sin(math.pi / 8), dtype=w.dtype))
        assert torch.det(w).item() == pytest.approx(1.0)
    torch.manual_seed(11)
    r = LULinear(2, "random", block=3).weight()
    torch.manual_seed(12)
    assert not torch.allclose(r, LULinear(2, "random", block=3).weight())


def test_even_rotations_spread_a_glow_stacks_coupling_directions_over_the_half_circle():
    """In Glow's data-to-latent order coupling k transforms coordinate ``k % 2`` of
    ``R^(k+1) x``: with ``R`` a rotation by ``pi / steps`` those directions (mod pi) start
    as ``steps`` evenly spaced ones."""
    steps = 8
    glow = Glow(steps=steps, linear_start="even").double()
    frame = torch.eye(2, dtype=torch.float64)
    angles = []
    for k, layer in enumerate(m for m in glow.layers if isinstance(m, LULinear)):
        frame = layer.weight().detach() @ frame
        row = frame[k % 2]  # the transformed coordinate is row . x
        angles.append(round(math.degrees(math.atan2(row[1], row[0])), 3) % 180)
    assert sorted(angles) == pytest.approx([180 / steps * i for i in range(steps)], abs=1e-3)


def test_a_glow_with_random_starts_loads_into_the_default_glow_as_the_same_model():
    """A Glow trained before ``linear_start`` (random rotations, some with a pivoting ``P``)
    is rebuilt with today's default and loads as itself: ``P`` and the signs are buffers."""
    torch.manual_seed(13)
    old = Glow(steps=4, linear_start="random").double().eval()
    assert any(
        not torch.equal(m.permutation, torch.eye(2)) for m in old.layers if hasattr(m, "sign")
    )
    new = Glow(steps=4).double().eval()
    new.load_state_dict(old.state_dict())
    x = torch.randn(50, 2, dtype=torch.float64)
    assert torch.equal(new.log_prob(x), old.log_prob(x))


def test_lu_linear_names_a_bad_start():
    with pytest.raises(ValueError, match="linear_start.*'rotation'"):
        LULinear(2, "rotation")
    with pytest.raises(ValueError, match="'even' is defined in 2D; dim is 3"):
        LULinear(3, "even")


# ----------------------------------------------------------------------------- NICE's keys
def test_a_nice_checkpoint_with_the_old_layer_names_loads():
    """NICE kept its layers as ``couplings.<k>`` and ``scaling`` before every flow was one
    ``InvertibleFlow``; such a state dict loads into today's NICE as the same model."""
    torch.manual_seed(9)
    new = NICE(couplings=3, hidden=8, depth=1, fourier=2)
    old = {}
    for key, value in new.state_dict().items():
        _, k, rest = key.split(".", 2)
        old[f"couplings.{k}.{rest}" if int(k) < 3 else f"scaling.{rest}"] = value
    assert {"scaling.log_scale", "couplings.2.fourier_b"} <= set(old)
    torch.manual_seed(10)
    loaded = NICE(couplings=3, hidden=8, depth=1, fourier=2)
    loaded.load_state_dict(old)
    x = torch.randn(9, 2)
    assert torch.equal(loaded.log_prob(x), new.log_prob(x))


def test_flows_are_instances_of_one_class():
    from genlab.models import InvertibleFlow
    from genlab.models.base import Layered

    for build in FLOWS.values():
        flow = build()
        assert isinstance(flow, InvertibleFlow) and isinstance(flow, Layered)
    assert NICE().constant_log_det and not any(
        FLOWS[n]().constant_log_det for n in ("realnvp", "glow", "nsf")
    )
    assert math.isclose(NICE().scaling.log_scale.sum().item(), 0.0)
