"""Schrödinger-bridge flow matching (SB-CFM): a Brownian bridge between entropic-OT pairs.

The Schrödinger bridge between a source ``p0`` and the data ``p1`` with a Brownian reference
of diffusion ``sigma`` is, at its two ends, the entropic optimal transport plan
``pi(x0, x1) ~ exp(-|x0 - x1|^2 / (2 sigma^2)) a(x0) b(x1)``, i.e. entropic OT with the squared
distance and regularisation ``eps = 2 sigma^2``; between them it is the Brownian bridge of
each pair, ``x_t = (1 - t) x0 + t x1 + sigma sqrt(t (1 - t)) z``. Training draws pairs from
the Sinkhorn plan of each minibatch (POT) and regresses two fields on the bridge:

- the **velocity** of its probability-flow ODE, on the bridge's conditional velocity
  ``u_t = x1 - x0 + (1 - 2t) / (2 sqrt(t (1 - t))) sigma z``: the ODE ``dx = v dt`` has the
  bridge's marginals, so it samples the data from the source and gives the exact ``log q``
  (the instantaneous change of variables, as every continuous flow here);
- the **score** of the marginals, on the bridge's conditional score, with the weight
  ``lambda_t = sigma sqrt(t (1 - t))``: ``|lambda_t s(t, x_t) + z|^2``. With it the SDE
  ``dx = [v + sigma^2 / 2 s] dt + sigma dW`` (the bridge's own forward SDE) samples the same
  marginals stochastically (``method="sde"``), as SF2M does.

As ``sigma -> 0`` the plan tends to the exact OT plan and the path to OT-CFM's straight line;
larger ``sigma`` blurs the pairing toward independent pairs and makes the paths noisier.

References:
    Tong, Malkin, Huguet, Zhang, Rector-Brooks, Fatras, Wolf, Bengio (2024), "Improving and
    generalizing flow-based generative models with minibatch optimal transport" (SB-CFM).
    Tong, Malkin, Fatras, Atanackovic, Zhang, Huguet, Wolf, Bengio (2024), "Simulation-Free
    Schrödinger Bridges via Score and Flow Matching" (SF2M: the score and the SDE).
    Cuturi (2013), "Sinkhorn Distances: Lightspeed Computation of Optimal Transport".
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from genlab.checks import check_positive
from genlab.models.base import check_points
from genlab.models.flow import EMA, ContinuousFlow
from genlab.ode import SOLVERS, Solver
from genlab.sampling import Sampler, marginal_sde

__all__ = ["SchrodingerBridge", "sinkhorn_plan", "sinkhorn_pairs"]

#: Training times are drawn from [T_EDGE, 1 - T_EDGE]: the bridge's conditional velocity has a
#: ``1 / sqrt(t (1 - t))`` term that is unbounded at the ends.
T_EDGE = 1e-3
#: The largest ``cost / reg`` at which :func:`sinkhorn_plan` iterates on ``exp(-cost / reg)``
#: itself (``exp(-500) ~ 1e-217``, far from float64's underflow).
PLAIN_LIMIT = 500.0


@torch.no_grad()
def sinkhorn_plan(x0: Tensor, x1: Tensor, reg: float) -> Tensor:
    """The entropic OT plan (B, B) of two minibatches (B, dim each) with uniform weights,
    squared Euclidean cost and regularisation ``reg``, by POT's Sinkhorn to a marginal error of
    1e-6; float64, on the CPU.

    The plain iteration works on ``exp(-cost / reg)``, which float64 holds while
    ``cost / reg`` stays below :data:`PLAIN_LIMIT`; beyond it POT's stabilised (log-absorbing)
    iteration takes over. The plain one is 1.4-2.8x faster (a 256-point batch at ``reg`` 0.5:
    4-20 ms); POT's log-domain one was 30-65x slower than it."""
    import ot  # here, not at the top: POT imports scikit-learn, two seconds of every start

    n, m = len(x0), len(x1)
    cost = torch.cdist(x0.double(), x1.double()).square().cpu().numpy()
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    method = "sinkhorn" if cost.max() / reg < PLAIN_LIMIT else "sinkhorn_stabilized"
    plan = ot.sinkhorn(a, b, cost, reg, method=method, numItermax=10_000, stopThr=1e-6)
    return torch.as_tensor(plan, dtype=torch.float64).clamp(min=0)


@torch.no_grad()
def sinkhorn_pairs(x0: Tensor, x1: Tensor, reg: float, generator=None) -> tuple[Tensor, Tensor]:
    """B pairs of rows of ``x0`` and ``x1`` drawn with replacement from their
    :func:`sinkhorn_plan`: each a draw of the bridge's end-point coupling.

    Returns:
        ``(x0[i], x1[j])``, each (B, dim).
    """
    plan = sinkhorn_plan(x0, x1, reg)
    flat = torch.multinomial(plan.reshape(-1), len(x0), replacement=True, generator=generator)
    flat = flat.to(x0.device)
    return x0[flat // len(x1)], x1[flat % len(x1)]


class SchrodingerBridge(ContinuousFlow):
    """SB-CFM: the probability-flow ODE and the SDE of a Schrödinger bridge from the source.

    Samplers: the ODE solvers, on the bridge's probability-flow ODE, and ``sde``:
    Euler-Maruyama on ``dx = [v + sigma^2 / 2 s] dt + sigma dW`` with the learned score ``s``
    (:func:`genlab.sampling.marginal_sde`, whose ``noise`` scales ``g^2 = noise * sigma^2``:
    1 is the bridge itself). ``log_prob`` is the ODE's, exact.

    Arguments:
        velocity: the field of the probability-flow ODE (a :class:`genlab.nn.TimeMLP`).
        score: the field of the marginals' score (the same kind of network).
        sampler, likelihood, dim, ema, source: see :class:`ContinuousFlow` (EMA weights of
            both fields sample and evaluate).
        sigma: the Brownian reference's diffusion (> 0); the Sinkhorn regularisation is
            ``2 sigma^2`` on the squared distances.
    """

    name = "schrodinger_bridge"
    methods = (*SOLVERS, "sde")

    def __init__(
        self,
        velocity: nn.Module,
        score: nn.Module,
        sampler: Sampler | Solver,
        likelihood: Solver,
        sigma: float = 0.5,
        ema: float = 0.999,
        dim: int = 2,
        source=None,
    ) -> None:
        super().__init__(velocity, sampler, likelihood, dim, ema, source)
        self.sigma = check_positive("sigma", sigma)
        self.score = score
        self.score_ema = EMA(score, ema) if ema > 0 else None

    @property
    def score_field(self) -> nn.Module:
        """The score used to sample: the EMA weights when there are some."""
        return self.score_ema.module if self.score_ema is not None else self.score

    def after_step(self) -> None:
        super().after_step()
        if self.score_ema is not None:
            self.score_ema.update(self.score)

    def bridge_loss(self, x0: Tensor, x1: Tensor, t: Tensor | None = None) -> Tensor:
        """Flow and score matching on the Brownian bridge of paired rows ``x0``, ``x1``:
        ``|v(t, x_t) - u_t|^2 + |lambda_t s(t, x_t) + z|^2``, averaged."""
        check_points(x0, self.dim)
        check_points(x1, self.dim)
        if t is None:
            t = T_EDGE + (1 - 2 * T_EDGE) * torch.rand(len(x0), device=x0.device, dtype=x0.dtype)
        z = torch.randn_like(x0)
        root = (t * (1 - t)).sqrt()[:, None]
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1 + self.sigma * root * z
        u = x1 - x0 + (1 - 2 * t[:, None]) / (2 * root) * self.sigma * z
        lam = self.sigma * root
        flow = (self.velocity(t, xt) - u).square().sum(-1)
        score = (lam * self.score(t, xt) + z).square().sum(-1)
        return (flow + score).mean()

    def loss(self, x: Tensor) -> Tensor:
        """Pairs of a fresh source batch and the data batch drawn from their Sinkhorn plan at
        ``2 sigma^2``, then :meth:`bridge_loss`."""
        x0, x1 = sinkhorn_pairs(self._training_noise(x), x, 2 * self.sigma**2)
        return self.bridge_loss(x0, x1)

    def velocity_and_score(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """The ODE's field and the learned score at time ``t``, each (B, dim): two network
        evaluations, counted as two."""
        self.counter.count += 2
        return self.field(t, x), self.score_field(t, x)

    def sample_with(self, z, sampler, generator, field=None) -> Tensor:
        """``sde``: the bridge's forward SDE, ``g^2 = noise * sigma^2`` (an unconditional
        model: ``field`` is always its own)."""
        g2 = sampler.noise * self.sigma**2
        return marginal_sde(
            self.velocity_and_score, lambda t: torch.full_like(t, g2), z, sampler.steps, generator
        )

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, reg={2 * self.sigma**2:g}, t in [{T_EDGE:g}, {1 - T_EDGE:g}]"
