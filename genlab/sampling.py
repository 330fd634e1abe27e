"""How continuous models sample: the :class:`Sampler` setting, and the one Euler-Maruyama loop.

A continuous model carries noise at t=0 to data at t=1. Its ``sample()`` either solves the ODE
``dx/dt = v(t, x)`` with a solver of :mod:`genlab.ode` (``dopri5``, ``euler``, ``midpoint``,
``rk4``), or runs a method of its own that is not an ODE solver: ``sde`` (the rectified flow and
diffusion; :func:`marginal_sde` below) and diffusion's discrete ``ancestral``, ``ddim``,
``dpmpp_2m`` and ``heun`` steps. :class:`Sampler` names the method and its settings; each model
lists the methods it knows in ``methods``.

The step grids: a model's own few-step methods place their ``steps + 1`` times on [0, 1] by
one of :data:`SPACINGS` (:func:`step_times`), given the path's log-SNR
``lambda(t) = log(alpha^2 / sigma^2)``: ``uniform`` in t, ``logsnr`` (uniform in lambda, as
DPM-Solver recommends), or ``karras`` (Karras et al. 2022: uniform in ``sigma_edm^(1/rho)``
with ``sigma_edm = sigma / alpha = exp(-lambda / 2)``, rho=7, which packs the steps towards
the data end). Every grid starts at t=0 and ends at t=1, the model's own ends.

The SDE: for any ``g(t) >= 0``, the SDE

    ``dx = [v(t, x) + g(t)^2 / 2 * grad log p_t(x)] dt + g(t) dW``

has the same marginals ``p_t`` as the ODE ``dx = v dt``: in the Fokker-Planck equation the
extra drift ``-div(p g^2/2 grad log p) = -g^2/2 lap p`` and the diffusion ``+g^2/2 lap p``
cancel. ``g = 0`` is the ODE; the reverse-time SDE of a diffusion is one choice of ``g``.

References:
    Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential
    Equations" (the reverse SDE and its probability-flow ODE).
    Kloeden & Platen (1992), "Numerical Solution of Stochastic Differential Equations"
    (Euler-Maruyama).
    Lu et al. (2022), "DPM-Solver" (steps uniform in log-SNR).
    Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models"
    (the rho=7 spacing, Heun's method and churn).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.checks import check_choice, check_int, check_positive
from genlab.ode import SOLVERS, Solver

__all__ = ["SPACINGS", "Sampler", "as_sampler", "marginal_sde", "step_times", "time_of_log_snr"]

SPACINGS = ("uniform", "logsnr", "karras")


@dataclass(frozen=True)
class Sampler:
    """How ``sample()`` carries noise (t=0) to data (t=1).

    Arguments:
        method: a solver of :data:`genlab.ode.SOLVERS`, or a method of the model that is not
            an ODE solver (``sde``; diffusion's ``ancestral`` and ``ddim``). The model checks
            it against its own ``methods``.
        steps: number of steps over [0, 1] (every method but ``dopri5``).
        atol, rtol: tolerances of ``dopri5``.
        eta: DDIM's noise, in [0, 1]: 0 is deterministic DDIM, 1 is DDPM's ancestral step.
        noise: scale of the SDE's ``g(t)^2`` (>= 0; 0 is the ODE). Each model states its
            ``g``.
        spacing: where a model's own few-step methods put their steps, one of
            :data:`SPACINGS` (:func:`step_times`); the ODE solvers of :mod:`genlab.ode` always
            take equal steps in t.
        rho: the ``karras`` spacing's exponent (> 0; 7 in Karras et al.).
        churn: Heun's ``S_churn`` (>= 0): noise added before each step, raising the noise
            level by the factor ``1 + min(churn / steps, sqrt(2) - 1)``; 0 is the ODE.
        guidance: the classifier-free guidance scale ``w`` (>= 0) of a conditional model's
            samples given classes: 0 is the conditional model itself, unguided (see
            :class:`genlab.models.flow.Guided`).
    """

    method: str = "dopri5"
    steps: int = 100
    atol: float = 1e-5
    rtol: float = 1e-5
    eta: float = 0.0
    noise: float = 1.0
    spacing: str = "uniform"
    rho: float = 7.0
    churn: float = 0.0
    guidance: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise ValueError(f"sampler method must be a name, got {self.method!r}")
        _ = self.ode_solver  # building the solver checks steps, atol and rtol
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {self.eta!r}")
        check_positive("noise", self.noise, zero=True)
        check_choice("spacing", self.spacing, SPACINGS)
        check_positive("rho", self.rho)
        check_positive("churn", self.churn, zero=True)
        check_positive("guidance", self.guidance, zero=True)

    @property
    def is_ode(self) -> bool:
        """Whether ``method`` is an ODE solver of :mod:`genlab.ode`."""
        return self.method in SOLVERS

    @property
    def ode_solver(self) -> Solver:
        """The ODE solver: ``method`` itself, or ``dopri5`` at ``atol``/``rtol`` for the other
        methods."""
        method = self.method if self.is_ode else "dopri5"
        return Solver(method, steps=self.steps, atol=self.atol, rtol=self.rtol)

    @property
    def path_solver(self) -> Solver:
        """The solver of the paths drawn in the figures: ``dopri5`` at ``atol``/``rtol``
        whatever ``method`` is, so that they show the ODE itself (the ODE that the stochastic
        methods sample the marginals of), not the polyline of a few fixed steps."""
        return Solver("dopri5", steps=self.steps, atol=self.atol, rtol=self.rtol)

    def replace(self, **overrides) -> Sampler:
        """A validated copy with the given fields changed; ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def as_sampler(sampler: Sampler | Solver) -> Sampler:
    """``sampler`` itself, or the :class:`Sampler` of an ODE :class:`Solver` (a config or a
    checkpoint may name a plain solver as its sampler)."""
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, Solver):
        return Sampler(sampler.method, sampler.steps, sampler.atol, sampler.rtol)
    raise TypeError(f"sampler must be a genlab Sampler or Solver, got {type(sampler).__name__}")


def step_times(
    spacing: str,
    steps: int,
    log_snr: Callable[[Tensor], Tensor] | None = None,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> Tensor:
    """The ``steps + 1`` times of a step grid on [0, 1], increasing from exactly 0 to exactly 1.

    Arguments:
        spacing: ``uniform`` (equal steps in t), ``logsnr`` (equal steps in ``lambda``) or
            ``karras`` (equal steps in ``sigma_edm^(1/rho)``, ``sigma_edm = exp(-lambda/2)``).
        steps: number of steps (>= 1).
        log_snr: the path's ``lambda(t) = log(alpha^2 / sigma^2)``, finite and increasing on
            [0, 1]; needed by every spacing but ``uniform``.
        rho: the ``karras`` exponent.

    The times of a target ``lambda`` are found by bisection (:func:`time_of_log_snr`), so any
    increasing schedule works.
    """
    check_int("steps", steps, 1)
    check_choice("spacing", spacing, SPACINGS)
    if spacing == "uniform":
        return torch.linspace(0.0, 1.0, steps + 1, dtype=dtype, device=device)
    if log_snr is None:
        raise ValueError(f"the {spacing!r} spacing needs the path's log-SNR")
    ends = log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    lo, hi = ends.tolist()
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"the {spacing!r} spacing needs a finite, increasing log-SNR; it runs from {lo} to {hi}"
        )
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if spacing == "logsnr":
        target = lo + u * (hi - lo)
    else:
        s_max, s_min = math.exp(-lo / (2 * rho)), math.exp(-hi / (2 * rho))
        target = -2 * rho * torch.log(s_max + u * (s_min - s_max))
    times = time_of_log_snr(log_snr, target)
    times[0], times[-1] = 0.0, 1.0
    return times.to(dtype=dtype, device=device)


def time_of_log_snr(log_snr: Callable[[Tensor], Tensor], target: Tensor) -> Tensor:
    """The times in [0, 1] at which an increasing ``log_snr`` reaches ``target`` (any shape),
    by 60 halvings in float64 (to 1e-18 in t); a target beyond an end gives that end."""
    target = torch.as_tensor(target, dtype=torch.float64)
    a, b = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(60):
        mid = 0.5 * (a + b)
        below = log_snr(mid) < target
        a, b = torch.where(below, mid, a), torch.where(below, b, mid)
    return 0.5 * (a + b)


def marginal_sde(
    velocity_and_score: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    g2: Callable[[Tensor], Tensor],
    x: Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    times: Tensor | None = None,
) -> Tensor:
    """Euler-Maruyama on ``dx = [v + g^2/2 * score] dt + g dW`` from t=0 (noise) to t=1.

    Step ``i`` from ``t_i`` to ``t_{i+1}`` (``h = t_{i+1} - t_i``; equal steps unless
    ``times`` are given): ``x <- x + (v + g^2/2 * s) h + sqrt(g^2 h) z`` with ``z ~ N(0, I)``
    from ``generator``, so the field is never evaluated at t=1 (where a path's score may be
    singular).

    Arguments:
        velocity_and_score: ``(t, x) -> (v, score)``, each (B, D), with ``t`` a 0-dim tensor;
            one network evaluation for both.
        g2: ``t -> g(t)^2``, the squared diffusion coefficient (0-dim tensor, >= 0).
        x: the noise at t=0, (B, D).
        steps: number of steps (>= 1).
        generator: the source of the Brownian increments (same generator state, same path).
        times: the ``steps + 1`` step times from 0 to 1 (:func:`step_times`); ``None``: equal.

    Returns:
        The state at t=1, (B, D).
    """
    check_int("steps", steps, 1)
    if times is None:
        times = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    grid = times.tolist()
    for i in range(steps):
        t = torch.tensor(grid[i], dtype=x.dtype, device=x.device)
        h = grid[i + 1] - grid[i]
        v, score = velocity_and_score(t, x)
        gg = g2(t)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + (v + 0.5 * gg * score) * h + torch.sqrt(gg * h) * z
    return x
