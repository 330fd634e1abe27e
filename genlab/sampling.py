"""How continuous models sample: the :class:`Sampler` setting, and the one Euler-Maruyama loop.

A continuous model carries noise at t=0 to data at t=1. Its ``sample()`` either solves the ODE
``dx/dt = v(t, x)`` with a solver of :mod:`genlab.ode` (``dopri5``, ``euler``, ``midpoint``,
``rk4``), or runs a method of its own that is not an ODE solver: ``sde`` (the rectified flow and
diffusion; :func:`marginal_sde` below) and diffusion's discrete ``ancestral`` and ``ddim``
steps. :class:`Sampler` names the method and its settings; each model lists the methods it
knows in ``methods``.

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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.checks import check_int, check_positive
from genlab.ode import SOLVERS, Solver

__all__ = ["Sampler", "as_sampler", "marginal_sde"]


@dataclass(frozen=True)
class Sampler:
    """How ``sample()`` carries noise (t=0) to data (t=1).

    Arguments:
        method: a solver of :data:`genlab.ode.SOLVERS`, or a method of the model that is not
            an ODE solver (``sde``; diffusion's ``ancestral`` and ``ddim``). The model checks
            it against its own ``methods``.
        steps: number of equal steps over [0, 1] (every method but ``dopri5``).
        atol, rtol: tolerances of ``dopri5``.
        eta: DDIM's noise, in [0, 1]: 0 is deterministic DDIM, 1 is DDPM's ancestral step.
        noise: scale of the SDE's ``g(t)^2`` (>= 0; 0 is the ODE). Each model states its
            ``g``.
    """

    method: str = "dopri5"
    steps: int = 100
    atol: float = 1e-5
    rtol: float = 1e-5
    eta: float = 0.0
    noise: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise ValueError(f"sampler method must be a name, got {self.method!r}")
        _ = self.ode_solver  # building the solver checks steps, atol and rtol
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {self.eta!r}")
        check_positive("noise", self.noise, zero=True)

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


def marginal_sde(
    velocity_and_score: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    g2: Callable[[Tensor], Tensor],
    x: Tensor,
    steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Euler-Maruyama on ``dx = [v + g^2/2 * score] dt + g dW`` from t=0 (noise) to t=1.

    Step ``i`` of ``h = 1/steps`` from ``t_i = i h``:
    ``x <- x + (v + g^2/2 * s) h + sqrt(g^2 h) z`` with ``z ~ N(0, I)`` from ``generator``, so
    the field is never evaluated at t=1 (where a path's score may be singular).

    Arguments:
        velocity_and_score: ``(t, x) -> (v, score)``, each (B, D), with ``t`` a 0-dim tensor;
            one network evaluation for both.
        g2: ``t -> g(t)^2``, the squared diffusion coefficient (0-dim tensor, >= 0).
        x: the noise at t=0, (B, D).
        steps: number of equal steps (>= 1).
        generator: the source of the Brownian increments (same generator state, same path).

    Returns:
        The state at t=1, (B, D).
    """
    check_int("steps", steps, 1)
    h = 1.0 / steps
    for i in range(steps):
        t = torch.tensor(i * h, dtype=x.dtype, device=x.device)
        v, score = velocity_and_score(t, x)
        gg = g2(t)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + (v + 0.5 * gg * score) * h + torch.sqrt(gg * h) * z
    return x
