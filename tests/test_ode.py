"""The continuous-time core against velocity fields with known answers."""

import math
import time

import pytest
import scipy.integrate
import scipy.linalg
import torch
from torch import nn
from torch.autograd.functional import jacobian

from genlab.nn import TimeMLP
from genlab.ode import (
    SOLVERS,
    NFECounter,
    Solver,
    divergence,
    transport,
    transport_logdet,
)

F64 = torch.float64
TIGHT = Solver(atol=1e-10, rtol=1e-10)
A = torch.tensor([[-0.4, 1.1], [-0.7, 0.25]], dtype=F64)


class LinearField(nn.Module):
    """v(t, x) = A x, with its exact Jacobian."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = nn.Parameter(matrix.clone())

    def forward(self, t, x):
        return x @ self.matrix.T

    def forward_with_jacobian(self, t, x):
        return self.forward(t, x), self.matrix.expand(x.shape[0], -1, -1)


def linear_fields(matrix=A):
    """The same linear field with and without forward_with_jacobian (both divergence paths)."""
    return {"module": LinearField(matrix), "lambda": lambda t, x: x @ matrix.T}


def make_field(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"hidden": 16, "depth": 2, "time_embedding": "sinusoidal", "frequencies": 2} | kwargs
    return TimeMLP(**kwargs).double()


def points(n=5, dim=2, seed=1):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def solver_for(method, **kwargs):
    return Solver(method, steps=kwargs.pop("steps", 20), **kwargs)


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("divergence_method", ["exact", "hutchinson"])
def test_zero_field_leaves_points_and_density_unchanged(method, divergence_method):
    x = points()
    solver = solver_for(method)
    # exact for fixed grids; dopri5's dense output at t1 adds rounding
    tol = {"rtol": 0, "atol": 1e-14 if method == "dopri5" else 0}
    for field in [lambda t, x: torch.zeros_like(x), LinearField(torch.zeros(2, 2, dtype=F64))]:
        torch.testing.assert_close(transport(field, x, solver=solver).x, x, **tol)
        sol = transport_logdet(field, x, solver=solver, divergence=divergence_method)
        torch.testing.assert_close(sol.x, x, **tol)
        assert torch.equal(sol.delta_logp, torch.zeros(5, dtype=F64))
        # so log p(x) = log prior(z) + delta_logp is the prior's log-density
        prior = -0.5 * (x * x).sum(-1) - math.log(2 * math.pi)
        log_p = -0.5 * (sol.x * sol.x).sum(-1) - math.log(2 * math.pi) + sol.delta_logp
        torch.testing.assert_close(log_p, prior, **tol)


@pytest.mark.parametrize("kind", ["module", "lambda"])
def test_linear_field_matches_the_matrix_exponential(kind):
    field = linear_fields()[kind]
    x = points()
    expm = torch.from_numpy(scipy.linalg.expm(A.numpy()))
    torch.testing.assert_close(transport(field, x, solver=TIGHT).x, x @ expm.T, rtol=0, atol=1e-8)
    back = transport(field, x, 1.0, 0.0, solver=TIGHT).x
    torch.testing.assert_close(back, x @ torch.linalg.inv(expm).T, rtol=0, atol=1e-8)

    sol = transport_logdet(field, x, solver=TIGHT)  # data (t=1) -> noise (t=0)
    torch.testing.assert_close(sol.x, back, rtol=0, atol=1e-8)
    trace = A.trace().expand(5)
    torch.testing.assert_close(sol.delta_logp, -trace, rtol=0, atol=1e-8)
    forward = transport_logdet(field, x, 0.0, 1.0, solver=TIGHT)
    torch.testing.assert_close(forward.delta_logp, trace, rtol=0, atol=1e-8)


@pytest.mark.parametrize("solver", [TIGHT, Solver("rk4", steps=5)], ids=["dopri5", "rk4"])
def test_polynomial_in_time_moves_by_exactly_one(solver):
    def field(t, x):
        return 3 * t**2 * torch.ones_like(x)

    x = points()
    torch.testing.assert_close(transport(field, x, solver=solver).x, x + 1, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        transport(field, x, 1.0, 0.0, solver=solver).x, x - 1, rtol=0, atol=1e-10
    )


def test_one_euler_step_is_exactly_one_evaluation():
    field = make_field()
    x = points()
    one = torch.tensor(1.0, dtype=F64)
    sol = transport(field, x, solver=Solver("euler", steps=1))
    assert sol.nfe == 1
    assert torch.equal(sol.x, x + field(torch.tensor(0.0, dtype=F64), x))
    back = transport(field, x, 1.0, 0.0, solver=Solver("euler", steps=1))
    assert back.nfe == 1
    assert torch.equal(back.x, x - field(one, x))


@pytest.mark.parametrize(("method", "per_step"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("steps", [1, 3, 7, 10, 33])
def test_fixed_step_solvers_use_exactly_their_evaluations(method, per_step, steps):
    field = make_field()
    x = points()
    counter = NFECounter()
    for t0, t1 in [(0.0, 1.0), (1.0, 0.0), (0.0, 0.3)]:
        sol = transport(field, x, t0, t1, solver=Solver(method, steps=steps), counter=counter)
        assert sol.nfe == per_step * steps
        sol = transport_logdet(field, x, t0, t1, solver=Solver(method, steps=steps))
        assert sol.nfe == per_step * steps
    assert counter.count == 3 * per_step * steps


def test_fixed_step_grid_is_uniform():
    seen = []

    def field(t, x):
        seen.append(float(t))
        return torch.zeros_like(x)

    transport(field, points(), 1.0, 0.0, solver=Solver("euler", steps=4))
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=1e-15)


# ------------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("time_embedding", ["concat", "sinusoidal"])
def test_exact_divergence_is_the_trace_of_the_jacobian(time_embedding):
    field = make_field(time_embedding=time_embedding, hidden=32, depth=3, dim=3)
    x = points(6, dim=3)
    t = torch.tensor(0.37, dtype=F64)
    jac = torch.stack([jacobian(lambda y: field(t, y[None])[0], xi) for xi in x])
    trace, frob = jac.diagonal(dim1=1, dim2=2).sum(-1), jac.pow(2).sum((1, 2))
    for f in [field, lambda t, x: field(t, x)]:  # forward-mode and autograd paths
        v, div, frob_f = divergence(f, t, x)
        torch.testing.assert_close(v, field(t, x), rtol=0, atol=1e-12)
        torch.testing.assert_close(div, trace, rtol=0, atol=1e-10)
        torch.testing.assert_close(frob_f, frob, rtol=0, atol=1e-10)


def test_autograd_divergence_keeps_its_graph_only_when_grad_is_enabled():
    field = make_field()
    x = points()
    t = torch.tensor(0.5, dtype=F64)
    _, div, _ = divergence(lambda t, x: field(t, x), t, x)
    assert div.requires_grad
    with torch.no_grad():
        _, div, _ = divergence(lambda t, x: field(t, x), t, x)
    assert not div.requires_grad


class PlainField(nn.Module):
    """A field without an analytic Jacobian: its divergence goes through autograd."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double()

    def forward(self, t, x):
        return self.net(torch.cat([x, t.expand(len(x), 1)], dim=1))


def test_a_frozen_field_builds_no_graph_even_with_grad_enabled():
    """A loaded (frozen) model's log_prob must not keep an adaptive solve's whole graph."""
    torch.manual_seed(0)
    field, x = PlainField(), points()
    t = torch.tensor(0.5, dtype=F64)
    assert divergence(field, t, x)[1].requires_grad  # trainable: the graph is kept
    field.requires_grad_(False)
    assert not divergence(field, t, x)[1].requires_grad
    sol = transport_logdet(field, x, 1.0, 0.0, Solver("dopri5", atol=1e-6, rtol=1e-6))
    assert not sol.delta_logp.requires_grad and not sol.x.requires_grad


def test_hutchinson_is_unbiased():
    field = make_field(hidden=32)
    t = torch.tensor(0.6, dtype=F64)
    x = points(4)
    draws = 4000
    xs = x.repeat_interleave(draws, dim=0)
    gen = torch.Generator().manual_seed(3)
    for noise in [
        torch.randint(0, 2, xs.shape, generator=gen).to(F64) * 2 - 1,  # Rademacher
        torch.randn(xs.shape, generator=gen, dtype=F64),  # Gaussian
    ]:
        _, est, frob_est = divergence(field, t, xs, method="hutchinson", noise=noise)
        _, exact, frob = divergence(field, t, x)
        for estimate, truth in [(est, exact), (frob_est, frob)]:
            estimate = estimate.reshape(4, draws)
            stderr = estimate.std(1) / math.sqrt(draws)
            assert ((estimate.mean(1) - truth).abs() < 3 * stderr + 1e-12).all()


def test_hutchinson_noise_is_drawn_once_per_solve():
    # For v = A x, div = trace(A) exactly, but eps^T A eps = A11 + A22 +- (A12 + A21) for a
    # fixed Rademacher eps: the solve must report one of those two values, not a mixture.
    x = points(64)
    sol = transport_logdet(
        LinearField(A), x, divergence="hutchinson", generator=torch.Generator().manual_seed(0)
    )
    off = A[0, 1] + A[1, 0]
    values = torch.stack([-(A.trace() + off), -(A.trace() - off)])
    gap = (sol.delta_logp[:, None] - values).abs().min(1).values
    assert (gap < 1e-6).all()
    again = transport_logdet(
        LinearField(A), x, divergence="hutchinson", generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.delta_logp, sol.delta_logp)


# ---------------------------------------------------------------------- flows of a TimeMLP


def test_transport_is_invertible():
    field = make_field(hidden=32, depth=3)
    x = points(8)
    solver = Solver(atol=1e-9, rtol=1e-9)
    z = transport(field, x, 0.0, 1.0, solver=solver).x
    assert (z - x).abs().max() > 1e-2  # the flow does move the points
    torch.testing.assert_close(transport(field, z, 1.0, 0.0, solver=solver).x, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["module", "lambda"])
def test_logdet_equals_log_abs_det_of_the_flow_map(kind):
    net = make_field(hidden=32, depth=3)
    field = net if kind == "module" else (lambda t, x: net(t, x))
    solver = Solver(atol=1e-9, rtol=1e-9)
    x0 = points(3)
    jac = jacobian(lambda y: transport(field, y, solver=solver).x, x0)  # (3, 2, 3, 2)
    blocks = torch.stack([jac[b, :, b, :] for b in range(3)])
    log_det = torch.linalg.slogdet(blocks).logabsdet
    assert log_det.abs().min() > 1e-3  # not trivially zero
    x1 = transport(field, x0, solver=solver).x
    with torch.no_grad():
        back = transport_logdet(field, x1, 1.0, 0.0, solver=solver)
        forward = transport_logdet(field, x0, 0.0, 1.0, solver=solver)
    torch.testing.assert_close(back.x, x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(-back.delta_logp, log_det, rtol=0, atol=1e-5)
    torch.testing.assert_close(forward.delta_logp, log_det, rtol=0, atol=1e-5)


def test_trajectory_at_output_times():
    field = make_field()
    x = points()
    times = torch.linspace(1, 0, 6)
    for solver in [TIGHT, Solver("rk4", steps=50)]:
        sol = transport(field, x, 1.0, 0.0, solver=solver, times=times)
        assert sol.x.shape == (6, 5, 2)
        assert torch.equal(sol.x[0], x)
        end = transport(field, x, 1.0, 0.0, solver=solver).x
        torch.testing.assert_close(sol.x[-1], end, rtol=0, atol=1e-7)
        mid = transport(field, x, 1.0, 0.4, solver=TIGHT).x
        torch.testing.assert_close(sol.x[3], mid, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------- regularisation


@pytest.mark.parametrize(("t0", "t1"), [(0.0, 1.0), (1.0, 0.0)])
def test_kinetic_energy_of_a_constant_field(t0, t1):
    c = torch.tensor([0.6, -1.7], dtype=F64)
    sol = transport_logdet(lambda t, x: c.expand_as(x), points(), t0, t1, regularize=True)
    torch.testing.assert_close(sol.kinetic, c.pow(2).sum().expand(5), rtol=0, atol=1e-10)
    torch.testing.assert_close(sol.jacobian_frobenius, torch.zeros(5, dtype=F64))
    torch.testing.assert_close(sol.delta_logp, torch.zeros(5, dtype=F64))


@pytest.mark.parametrize(("t0", "t1"), [(0.0, 1.0), (1.0, 0.0)])
@pytest.mark.parametrize("kind", ["module", "lambda"])
def test_regularisers_of_a_linear_field(kind, t0, t1):
    x = points(3)
    sol = transport_logdet(linear_fields()[kind], x, t0, t1, solver=TIGHT, regularize=True)
    frob = A.pow(2).sum().expand(3)
    torch.testing.assert_close(sol.jacobian_frobenius, frob, rtol=0, atol=1e-8)
    sign = 1.0 if t1 > t0 else -1.0

    def speed2(t, i):  # |v(x(t))|^2 along the exact path from x(t0)
        xt = scipy.linalg.expm(A.numpy() * sign * t) @ x[i].numpy()
        return float(((A.numpy() @ xt) ** 2).sum())

    kinetic = [scipy.integrate.quad(speed2, 0, 1, args=(i,), epsabs=1e-12)[0] for i in range(3)]
    torch.testing.assert_close(sol.kinetic, torch.tensor(kinetic, dtype=F64), rtol=0, atol=1e-7)
    assert transport_logdet(LinearField(A), x).kinetic is None


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("kind", ["logdet", "transport"])
def test_adjoint_gradients_match_backprop(kind):
    field = make_field(hidden=16, depth=2)
    x = points(4)
    grads, counts = [], []
    for adjoint in [False, True]:
        field.zero_grad()
        x0 = x.clone().requires_grad_(True)
        counter = NFECounter()
        solver = Solver(atol=1e-9, rtol=1e-9, adjoint=adjoint)
        if kind == "logdet":
            sol = transport_logdet(field, x0, solver=solver, regularize=True, counter=counter)
            loss = (sol.delta_logp + sol.x.pow(2).sum(-1) + 0.1 * sol.kinetic).sum()
        else:
            sol = transport(field, x0, solver=solver, counter=counter)
            loss = sol.x.pow(2).sum()
        assert counter.count == sol.nfe > 0
        loss.backward()
        counts.append((sol.nfe, counter.count))
        grads.append([x0.grad] + [p.grad.clone() for p in field.parameters()])
        assert all(g.abs().sum() > 0 for g in grads[-1])
    for g_backprop, g_adjoint in zip(*grads, strict=True):
        torch.testing.assert_close(g_adjoint, g_backprop, rtol=1e-6, atol=1e-6)
    (nfe, total), (nfe_adj, total_adj) = counts
    assert total == nfe  # backprop through the solver evaluates the field no more
    assert total_adj > nfe_adj  # the adjoint's backward solve is counted


def test_adjoint_fixed_step_solver_runs():
    field = make_field()
    x0 = points().requires_grad_(True)
    sol = transport_logdet(field, x0, solver=Solver("rk4", steps=8, adjoint=True))
    assert sol.nfe == 32
    sol.delta_logp.sum().backward()
    assert x0.grad is not None and all(p.grad is not None for p in field.parameters())


def test_adjoint_needs_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        transport(lambda t, x: x, points(), solver=Solver(adjoint=True))


# ------------------------------------------------------------------------ float32, inputs


def test_float32_works():
    torch.manual_seed(0)
    field = TimeMLP(hidden=16, depth=2)
    x = torch.randn(6, 2)
    sol = transport_logdet(field, x, regularize=True, divergence="hutchinson")
    for value in [sol.x, sol.delta_logp, sol.kinetic, sol.jacobian_frobenius]:
        assert value.dtype == torch.float32 and torch.isfinite(value).all()
    assert transport(field, x, solver=Solver("euler", steps=3)).x.dtype == torch.float32


def test_solver_validation_names_the_bad_value():
    with pytest.raises(
        ValueError, match="unknown solver 'eulr'; choose one of: dopri5, euler, midpoint, rk4"
    ):
        Solver("eulr")
    for steps in [0, -3, 2.5, True]:
        with pytest.raises(ValueError, match=rf"steps must be an int >= 1, got {steps!r}"):
            Solver("euler", steps=steps)
    with pytest.raises(ValueError, match="atol must be > 0, got 0"):
        Solver(atol=0)
    with pytest.raises(ValueError, match="rtol must be > 0, got -1e-05"):
        Solver(rtol=-1e-5)
    with pytest.raises(ValueError, match="max_steps"):
        Solver(max_steps=0)
    solver = Solver().replace(method="euler", steps=None, atol=1e-3)
    assert solver == Solver("euler", steps=100, atol=1e-3)
    with pytest.raises(ValueError, match="steps"):
        solver.replace(steps=0)


def test_bad_calls_raise():
    field = make_field()
    x = points()
    with pytest.raises(ValueError, match="unknown divergence 'hutch'; choose one of: exact"):
        transport_logdet(field, x, divergence="hutch")
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence(field, 0.0, x, method="hutch")
    with pytest.raises(ValueError, match="noise"):
        divergence(field, 0.0, x, method="hutchinson")
    with pytest.raises(ValueError, match="strictly"):
        transport(field, x, 0.5, 0.5)
    with pytest.raises(ValueError, match="times must run from t0=0.0 to t1=1.0"):
        transport(field, x, times=[1.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        transport(field, x[0])


def test_an_escape_radius_stops_the_rows_that_run_off_and_solves_the_others():
    """v = -x|x| backwards in time is dx/ds = x|x| (s = 1 - t): a coordinate with |x| < 1
    reaches x / (1 - |x|) at t=0 with delta_logp = -2 sum log(1 - |x|), one with |x| >= 1
    runs off to infinity before t=0 and fails the adaptive solve of the whole batch."""

    def field(t, x):
        return -x * x.abs()

    x = torch.tensor([[0.2, -0.3], [3.0, 0.1], [-0.5, 0.4]], dtype=F64)
    solver = Solver(atol=1e-9, rtol=1e-9)
    with pytest.raises(RuntimeError, match="ODE solve"):
        transport_logdet(field, x, solver=solver)
    sol = transport_logdet(field, x, solver=solver, escape=1e3)
    kept = [0, 2]
    torch.testing.assert_close(sol.x[kept], x[kept] / (1 - x[kept].abs()), rtol=0, atol=1e-7)
    exact = -2 * torch.log1p(-x[kept].abs()).sum(-1)
    torch.testing.assert_close(sol.delta_logp[kept], exact, rtol=0, atol=1e-7)
    assert sol.x[1].abs().max() > 1e3 and torch.isfinite(sol.x).all()
    with pytest.raises(ValueError, match="escape must be > 0, got -1.0"):
        transport_logdet(field, x, escape=-1.0)


def test_max_steps_exceeded_fails_fast():
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"exceeded max_steps=10 \(dopri5, atol=1e-05"):
        transport(lambda t, x: -1e6 * x, points(), solver=Solver(max_steps=10))
    with pytest.raises(RuntimeError, match="max_steps=10"):
        stiff = LinearField(-1e6 * torch.eye(2, dtype=F64))
        transport_logdet(stiff, points(), solver=Solver(max_steps=10))
    assert time.perf_counter() - start < 5


def test_max_steps_also_caps_the_adjoint_backward_solve():
    field = make_field()
    x0 = points().requires_grad_(True)
    sol = transport(field, x0, solver=Solver(adjoint=True, max_steps=12))
    assert sol.nfe <= 2 + 6 * 12  # the forward solve fits (initial step choice + 6 per step)
    with pytest.raises(RuntimeError, match="max_steps=12"):
        sol.x.pow(2).sum().backward()  # the adjoint system (with parameters) needs more steps
