"""The one continuous-time core: transport along a velocity field, with or without log-density.

Time runs from t = 0 (noise, the prior) to t = 1 (data). A velocity field is a callable
``v(t, x)`` with ``t`` a 0-dim tensor and ``x`` of shape (B, D), returning (B, D); fields that
also have ``forward_with_jacobian(t, x) -> (v, J)`` (such as :class:`genlab.nn.TimeMLP`) get
their exact divergence without autograd. Every solve runs on torchdiffeq.

References:
    Chen et al. (2018), "Neural Ordinary Differential Equations".
    Grathwohl et al. (2019), "FFJORD: Free-form Continuous Dynamics for Scalable Reversible
    Generative Models".
    Finlay et al. (2020), "How to train your neural ODE: the world of Jacobian and kinetic
    regularization".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from genlab.checks import check_choice, check_int, check_positive

__all__ = [
    "SOLVERS",
    "DIVERGENCES",
    "DEFAULT_SOLVER",
    "Solver",
    "NFECounter",
    "Solution",
    "divergence",
    "transport",
    "transport_logdet",
]

#: Solver names: ``dopri5`` is adaptive, the others take ``steps`` equal steps.
SOLVERS = ("dopri5", "euler", "midpoint", "rk4")
DIVERGENCES = ("exact", "hutchinson")

Field = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Solver:
    """How to integrate an ODE.

    Arguments:
        method: one of :data:`SOLVERS`.
        steps: number of equal steps over [t0, t1] (fixed-step methods).
        atol: absolute tolerance (dopri5).
        rtol: relative tolerance (dopri5).
        adjoint: compute gradients by the adjoint method (``torchdiffeq.odeint_adjoint``, memory
            independent of the number of steps) instead of backpropagating through the solver.
        max_steps: cap on the accepted plus rejected steps of one adaptive solve (and, separately,
            of its adjoint backward solves); exceeding it raises ``RuntimeError``.
    """

    method: str = "dopri5"
    steps: int = 100
    atol: float = 1e-5
    rtol: float = 1e-5
    adjoint: bool = False
    max_steps: int = 10_000

    def __post_init__(self) -> None:
        check_choice("solver", self.method, SOLVERS)
        check_int("steps", self.steps, 1)
        check_int("max_steps", self.max_steps, 1)
        check_positive("atol", self.atol)
        check_positive("rtol", self.rtol)

    @property
    def adaptive(self) -> bool:
        """Whether the step size is chosen by error control."""
        return self.method == "dopri5"

    def replace(self, **overrides) -> Solver:
        """Return a copy with the given fields changed; overrides that are ``None`` are ignored.

        Arguments:
            overrides: field values, e.g. ``method="euler", steps=1``.

        Returns:
            A new, validated :class:`Solver`.
        """
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def describe(self) -> str:
        """A short human-readable summary, e.g. ``dopri5, atol=1e-05, rtol=1e-05``."""
        if self.adaptive:
            return f"{self.method}, atol={self.atol:g}, rtol={self.rtol:g}"
        return f"{self.method}, steps={self.steps}"


class NFECounter:
    """A running count of velocity evaluations (one batched call of the field counts 1).

    Pass it to :func:`transport` or :func:`transport_logdet`: it counts every evaluation of
    those solves, including those of adjoint backward passes.
    """

    def __init__(self) -> None:
        self.count = 0

    def __repr__(self) -> str:
        return f"NFECounter(count={self.count})"


@dataclass
class Solution:
    """The result of a solve.

    Attributes:
        x: the state at ``t1`` (B, D), or the trajectory (T, B, D) if ``times`` was given.
        delta_logp: (B,) from :func:`transport_logdet`, ``∫_{t0}^{t1} div v dt``, so that
            ``log p_{t0}(x(t0)) = log p_{t1}(x(t1)) + delta_logp``; ``None`` otherwise.
        kinetic: (B,) ``∫ |v|^2 dt`` over the solve when ``regularize=True``, else ``None``.
        jacobian_frobenius: (B,) ``∫ ||dv/dx||_F^2 dt`` when ``regularize=True``, else ``None``.
        nfe: velocity evaluations during the forward solve.
    """

    x: Tensor
    delta_logp: Tensor | None = None
    kinetic: Tensor | None = None
    jacobian_frobenius: Tensor | None = None
    nfe: int = 0


def _needs_graph(field: Field, x: Tensor) -> bool:
    """Whether a result must stay differentiable: grad mode is on and something upstream
    (``x`` or a parameter of the field) requires grad. A frozen model builds no graph."""
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad or not isinstance(field, nn.Module):
        return True
    return any(p.requires_grad for p in field.parameters())


def _batch_jacobian(field: Field, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(v, J)`` by autograd, one pass per coordinate, vectorised over the batch."""
    create_graph = _needs_graph(field, x)
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        v = field(t, xg)
        if not v.requires_grad:  # v does not depend on x nor on anything trainable
            return v, x.new_zeros(*x.shape, x.shape[1])
        rows = []
        for i in range(x.shape[1]):
            (row,) = torch.autograd.grad(
                v[:, i].sum(), xg, create_graph=create_graph, retain_graph=True, allow_unused=True
            )
            rows.append(torch.zeros_like(x) if row is None else row)
    jac = torch.stack(rows, dim=1)
    return (v, jac) if create_graph else (v.detach(), jac.detach())


def _vjp(field: Field, t: Tensor, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """``(v, eps^T J)`` by one reverse-mode pass."""
    create_graph = _needs_graph(field, x)
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        v = field(t, xg)
        if not v.requires_grad:
            return v, torch.zeros_like(x)
        (e_jac,) = torch.autograd.grad(
            v, xg, eps, create_graph=create_graph, retain_graph=create_graph, allow_unused=True
        )
    e_jac = torch.zeros_like(x) if e_jac is None else e_jac
    return (v, e_jac) if create_graph else (v.detach(), e_jac.detach())


def divergence(
    field: Field,
    t: Tensor,
    x: Tensor,
    *,
    method: str = "exact",
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Velocity, divergence and squared Frobenius norm of the Jacobian of a field.

    The batch rows must be independent (the field acts on each point alone). Results keep their
    autograd graph when grad mode is on (they can be trained through) and are detached otherwise.

    Arguments:
        field: a velocity field ``v(t, x)``; if it has ``forward_with_jacobian``, the exact
            method uses it instead of autograd.
        t: time, a 0-dim tensor.
        x: points of shape (B, D).
        method: ``"exact"`` (the trace of the Jacobian, one autograd pass per coordinate) or
            ``"hutchinson"`` (the unbiased estimate ``eps^T J eps`` from one vector-Jacobian
            product).
        noise: the probe ``eps`` of shape (B, D) for ``"hutchinson"`` (Rademacher or Gaussian),
            drawn by the caller.

    Returns:
        ``(v, div, frob)``: ``v`` (B, D); ``div`` (B,) the divergence; ``frob`` (B,) the
        squared Frobenius norm ``||J||_F^2`` (its estimate ``|eps^T J|^2`` for Hutchinson,
        unbiased for noise with identity covariance).
    """
    check_choice("divergence", method, DIVERGENCES)
    if method == "exact":
        if hasattr(field, "forward_with_jacobian"):
            v, jac = field.forward_with_jacobian(t, x)
        else:
            v, jac = _batch_jacobian(field, t, x)
        return v, jac.diagonal(dim1=1, dim2=2).sum(-1), jac.pow(2).sum((1, 2))
    if noise is None or noise.shape != x.shape:
        shape = None if noise is None else tuple(noise.shape)
        raise ValueError(f"hutchinson needs noise of shape {tuple(x.shape)}, got {shape}")
    v, e_jac = _vjp(field, t, x, noise)
    return v, (e_jac * noise).sum(-1), e_jac.pow(2).sum(-1)


class _Dynamics(nn.Module):
    """The right-hand side given to torchdiffeq: the field, maybe augmented, with counters.

    An ``nn.Module`` holding the field, as ``odeint_adjoint`` requires. It counts every
    evaluation (``nfe`` and the caller's counter) and, through torchdiffeq's step callbacks,
    every attempted adaptive step, raising once ``solver.max_steps`` is passed.
    """

    def __init__(
        self,
        field: Field,
        solver: Solver,
        counter: NFECounter | None,
        *,
        logdet: bool = False,
        method: str = "exact",
        noise: Tensor | None = None,
        regularize: bool = False,
        sign: float = 1.0,
        escape: float | None = None,
    ) -> None:
        super().__init__()
        self.field = field
        self.solver = solver
        self.counter = counter
        self.logdet = logdet
        self.method = method
        self.noise = noise
        self.regularize = regularize
        self.sign = sign
        self.escape = escape
        self.nfe = 0
        self.steps = 0
        self.adjoint_steps = 0

    def forward(self, t: Tensor, state: Tensor | tuple[Tensor, ...]):
        self.nfe += 1
        if self.counter is not None:
            self.counter.count += 1
        if not self.logdet:
            return self.field(t, state)
        v, div, frob = divergence(self.field, t, state[0], method=self.method, noise=self.noise)
        if self.escape is not None:  # rows that left the box stop where they are
            gone = state[0].abs().amax(-1) > self.escape
            v, div = v.masked_fill(gone[:, None], 0.0), div.masked_fill(gone, 0.0)
        if not self.regularize:
            return v, div
        return v, div, self.sign * v.pow(2).sum(-1), self.sign * frob

    def _count_step(self, steps: int) -> int:
        if self.solver.adaptive and steps > self.solver.max_steps:
            raise RuntimeError(
                f"ODE solve exceeded max_steps={self.solver.max_steps} ({self.solver.describe()});"
                " the field may be too stiff: raise the tolerances or max_steps"
            )
        return steps

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        """Called by torchdiffeq before every attempted step of the forward solve."""
        self.steps = self._count_step(self.steps + 1)

    def callback_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        """Called by torchdiffeq before every attempted step of the adjoint backward solves."""
        self.adjoint_steps = self._count_step(self.adjoint_steps + 1)


#: The default solver: dopri5 at atol = rtol = 1e-5.
DEFAULT_SOLVER = Solver()


def _uniform_grid(steps: int) -> Callable[[Callable, Tensor, Tensor], Tensor]:
    """A torchdiffeq ``grid_constructor``: ``steps`` equal steps from ``t[0]`` to ``t[-1]``.

    torchdiffeq calls it with the requested times in their own direction (it negates decreasing
    times around the call), and requires the grid's ends to equal them exactly.
    """

    def grid(func: Callable, y0: Tensor, t: Tensor) -> Tensor:
        g = torch.linspace(0, 1, steps + 1, dtype=t.dtype, device=t.device)
        g = t[0] + (t[-1] - t[0]) * g
        g[0], g[-1] = t[0], t[-1]
        return g

    return grid


def _time_grid(t0: float, t1: float, times: Sequence[float] | Tensor | None, x: Tensor) -> Tensor:
    """The 1D tensor of output times in ``x``'s dtype and device, checked."""
    if times is None:
        times = [float(t0), float(t1)]
    ts = torch.as_tensor(times, dtype=x.dtype, device=x.device).detach().clone()
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError(f"times must be a 1D sequence of at least 2 times, got {times!r}")
    ends = (float(ts[0]), float(ts[-1]))
    if not all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(ends, (t0, t1), strict=True)):
        raise ValueError(f"times must run from t0={t0} to t1={t1}, got {ends[0]} ... {ends[1]}")
    ts[0], ts[-1] = float(t0), float(t1)  # exact ends, whatever the dtype of `times`
    steps = ts.diff()
    if not ((steps > 0).all() or (steps < 0).all()):
        raise ValueError(f"times must be strictly increasing or decreasing, got {times!r}")
    return ts


def _check_inputs(field: Field, x: Tensor, solver: Solver) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected points of shape (B, D), got {shape}")
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a genlab.ode.Solver, got {type(solver).__name__}")
    if solver.adjoint and not isinstance(field, nn.Module):
        raise TypeError(
            "adjoint=True needs the field to be an nn.Module (its parameters are the adjoint "
            f"parameters), got {type(field).__name__}"
        )


def _solve(dynamics: _Dynamics, y0, ts: Tensor, solver: Solver):
    """Run torchdiffeq; returns the states at ``ts`` as torchdiffeq does."""
    if solver.adaptive:
        options = {}
    else:
        options = {"grid_constructor": _uniform_grid(solver.steps)}
    kwargs = dict(method=solver.method, atol=solver.atol, rtol=solver.rtol, options=options)
    try:
        if solver.adjoint:
            params = tuple(dynamics.field.parameters())
            return odeint_adjoint(dynamics, y0, ts, adjoint_params=params, **kwargs)
        return odeint(dynamics, y0, ts, **kwargs)
    except AssertionError as err:  # torchdiffeq's checks: dt underflow, non-finite state
        raise RuntimeError(f"ODE solve failed ({solver.describe()}): {err}") from err


def transport(
    field: Field,
    x: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    solver: Solver = DEFAULT_SOLVER,
    *,
    times: Sequence[float] | Tensor | None = None,
    counter: NFECounter | None = None,
) -> Solution:
    """Integrate ``dx/dt = v(t, x)`` from ``t0`` to ``t1`` (either direction).

    Arguments:
        field: the velocity field ``v(t, x)``.
        x: the state at ``t0``, shape (B, D).
        t0: start time.
        t1: end time (different from ``t0``).
        solver: the integration scheme.
        times: optional strictly monotone 1D output times, from ``t0`` to ``t1`` inclusive.
            Fixed-step solvers keep their ``steps`` equal steps over [t0, t1] and interpolate
            linearly at output times between grid points.
        counter: optional running count of velocity evaluations (adjoint backward included).

    Returns:
        A :class:`Solution` whose ``x`` is the state at ``t1`` (B, D), or the trajectory
        (T, B, D) at ``times``.
    """
    _check_inputs(field, x, solver)
    ts = _time_grid(t0, t1, times, x)
    dynamics = _Dynamics(field, solver, counter)
    xs = _solve(dynamics, x, ts, solver)
    return Solution(x=xs if times is not None else xs[-1], nfe=dynamics.nfe)


def _rademacher(x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = x.device if generator is None else generator.device
    noise = torch.empty(x.shape, dtype=x.dtype, device=device).bernoulli_(0.5, generator=generator)
    return (2 * noise - 1).to(x.device)


def transport_logdet(
    field: Field,
    x: Tensor,
    t0: float = 1.0,
    t1: float = 0.0,
    solver: Solver = DEFAULT_SOLVER,
    *,
    divergence: str = "exact",
    regularize: bool = False,
    generator: torch.Generator | None = None,
    counter: NFECounter | None = None,
    escape: float | None = None,
) -> Solution:
    """Integrate ``x`` and its log-density change along ``dx/dt = v(t, x)``.

    The augmented state ``(x, l)`` follows ``dl/dt = div v(t, x)`` with ``l(t0) = 0``, so
    ``delta_logp = l(t1) = ∫_{t0}^{t1} div v dt`` and, by the instantaneous change of variables
    ``d log p_t(x(t))/dt = -div v``,

        ``log p_{t0}(x(t0)) = log p_{t1}(x(t1)) + delta_logp``.

    With the defaults (``t0 = 1`` data, ``t1 = 0`` noise) this reads
    ``log p_data(x) = log p_prior(z) + delta_logp`` with ``z = solution.x`` and
    ``delta_logp = -∫_0^1 div v dt``.

    Arguments:
        field: the velocity field ``v(t, x)``.
        x: the state at ``t0``, shape (B, D).
        t0: start time (default 1, data).
        t1: end time (default 0, noise).
        solver: the integration scheme.
        divergence: ``"exact"`` or ``"hutchinson"``; the Hutchinson probe is Rademacher noise
            drawn once per solve (from ``generator`` if given) and held fixed inside it.
        regularize: also integrate the kinetic energy ``|v|^2`` and ``||dv/dx||_F^2`` (RNODE),
            reported as non-negative integrals over the interval whatever its direction.
        generator: random generator for the Hutchinson probe.
        counter: optional running count of velocity evaluations (adjoint backward included).
        escape: a radius: a row whose state leaves the box ``|x|_inf <= escape`` stops there
            (its velocity and divergence are taken as 0 from then on), so that the solve goes
            on for the other rows; such a row ends outside the box, and its ``delta_logp`` is
            not the integral. For a screen only: a path that runs off to infinity makes the
            adaptive step underflow (a field of Fourier features oscillates on the scale of
            its frequencies however far out it is), and fails the solve of the whole batch.

    Returns:
        A :class:`Solution` with ``x`` (B, D) at ``t1``, ``delta_logp`` (B,), and with
        ``regularize`` also ``kinetic`` and ``jacobian_frobenius`` (B,).
    """
    _check_inputs(field, x, solver)
    if escape is not None:
        check_positive("escape", escape)
    check_choice("divergence", divergence, DIVERGENCES)
    ts = _time_grid(t0, t1, None, x)
    noise = _rademacher(x, generator) if divergence == "hutchinson" else None
    dynamics = _Dynamics(
        field,
        solver,
        counter,
        logdet=True,
        method=divergence,
        noise=noise,
        regularize=regularize,
        sign=1.0 if t1 > t0 else -1.0,
        escape=escape,
    )
    zeros = x.new_zeros(x.shape[0])
    y0 = (x, zeros, zeros, zeros) if regularize else (x, zeros)
    x1, delta_logp, *regularizers = (state[-1] for state in _solve(dynamics, y0, ts, solver))
    kinetic, frobenius = regularizers or (None, None)
    return Solution(x1, delta_logp, kinetic, jacobian_frobenius=frobenius, nfe=dynamics.nfe)
