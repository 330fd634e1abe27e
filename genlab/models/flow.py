"""The continuous flows' common part: a velocity field ``v(t, x)`` and the ODE ``dx/dt = v``.

Time runs from t=0 (noise, the prior) to t=1 (data). Sampling integrates noise forwards;
``log_prob`` integrates data backwards to t=0 with the augmented state ``[x, log-det]``
(instantaneous change of variables, exact divergence) through :mod:`genlab.ode`, the one core
shared by the CNF and the rectified flow, which differ only in how they are trained.

References:
    Chen et al. (2018), "Neural Ordinary Differential Equations".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genlab.models.base import Model, StandardNormal, Transport, check_count, check_points
from genlab.ode import NFECounter, Solver, transport, transport_logdet

__all__ = ["ContinuousFlow"]


class ContinuousFlow(Model, Transport):
    """A model defined by a velocity field and the standard normal prior at t=0.

    Arguments:
        velocity: the field, called as ``velocity(t, x)``; a :class:`genlab.nn.TimeMLP`.
        sampler: the solver ``sample`` and the plots use by default (overridable per call).
        likelihood: the solver ``log_prob`` uses; the divergence there is always exact.
        dim: dimension of the data.
    """

    few_step_samplers = {"euler": {"method": "euler"}}

    def __init__(
        self, velocity: nn.Module, sampler: Solver, likelihood: Solver, dim: int = 2
    ) -> None:
        super().__init__()
        self.dim = dim
        self.velocity = velocity
        self.sampler = sampler
        self.likelihood = likelihood
        self.prior = StandardNormal(dim)
        self.counter = NFECounter()

    @property
    def field(self) -> nn.Module:
        """The field used to sample and to evaluate (subclasses may return an average)."""
        return self.velocity

    @property
    def nfe(self) -> int:
        """Velocity evaluations so far, over every solve (training, sampling, likelihood)."""
        return self.counter.count

    def _noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        p = next(self.velocity.parameters())
        return self.prior.sample(check_count(n), generator, device=p.device, dtype=p.dtype)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        method: str | None = None,
        steps: int | None = None,
        atol: float | None = None,
        rtol: float | None = None,
    ) -> Tensor:
        """Integrate ``n`` noise points from t=0 to t=1. Returns (n, dim).

        Keywords override the configured sampler, e.g. ``sample(n, method="euler", steps=1)``.
        """
        solver = self.sampler.replace(method=method, steps=steps, atol=atol, rtol=rtol)
        return self.push(self._noise(n, generator), solver=solver)

    def push(self, z: Tensor, t0: float = 0.0, t1: float = 1.0, solver: Solver | None = None):
        """Transport points ``z`` (B, dim) from time ``t0`` to ``t1``; returns (B, dim)."""
        check_points(z, self.dim)
        solver = solver or self.sampler
        return transport(self.field, z, t0, t1, solver, counter=self.counter).x

    def trajectories(
        self, n: int, generator: torch.Generator | None = None, points: int = 65
    ) -> Tensor:
        """Paths of ``n`` noise points at ``points`` equally spaced times from 0 to 1.

        Returns:
            (points, n, dim), the first entry the noise, the last the samples.
        """
        times = torch.linspace(0.0, 1.0, points).tolist()
        z = self._noise(n, generator)
        with torch.no_grad():
            return transport(
                self.field, z, 0.0, 1.0, self.sampler, times=times, counter=self.counter
            ).x

    def log_prob(self, x: Tensor, t: float = 1.0) -> Tensor:
        """Exact log-density of ``x`` (B, dim) under the flow's marginal at time ``t``.

        ``t=1`` (default) is the model's density of data; ``t=0`` the prior's. Integrates from
        ``t`` back to 0 with ``d log-det/dt = div v`` and the likelihood solver. Returns (B,).
        """
        check_points(x, self.dim)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t!r}")
        if t == 0.0:
            return self.prior.log_prob(x)
        sol = transport_logdet(
            self.field, x, t, 0.0, self.likelihood, divergence="exact", counter=self.counter
        )
        return self.prior.log_prob(sol.x) + sol.delta_logp
