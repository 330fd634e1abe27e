"""Rectified flow: a velocity field regressed on straight noise-to-data interpolations, and reflow.

Training pairs ``x0 ~ N(0, I)`` (or any source distribution: a toy carried to another),
``x1 ~ data``, ``t ~ p(t)``, ``x_t = (1 - t) x0 + t x1`` and
the loss ``|v(t, x_t) - (x1 - x0)|^2``. Reflow draws noise, integrates it to data with a precise
solver and retrains on these fixed (noise, sample) pairs, which straightens the paths so that
few Euler steps suffice. Besides the ODE it samples by an SDE with the same marginals
(``method="sde"``): along the straight path its velocity determines the score.

References:
    Liu, Gong, Liu (2022), "Flow Straight and Fast: Learning to Generate and Transfer Data with
    Rectified Flow".
    Esser et al. (2024), "Scaling Rectified Flow Transformers" (logit-normal time sampling).
    Tong et al. (2024), "Improving and generalizing flow-based generative models with
    minibatch optimal transport"; Pooladian et al. (2023), "Multisample Flow Matching" (OT
    coupling).
    Ma et al. (2024), "SiT: Exploring Flow and Diffusion-based Generative Models with Scalable
    Interpolant Transformers" (sampling an interpolant's SDE with diffusion ``w_t = sigma_t``).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from genlab.checks import check_choice, check_int
from genlab.models.base import Stage, check_count, check_points
from genlab.models.flow import ContinuousFlow
from genlab.ode import SOLVERS, Solver, transport
from genlab.sampling import Sampler, marginal_sde

__all__ = ["RectifiedFlow", "TIME_DISTRIBUTIONS", "ot_pairing", "class_ot_pairing"]

TIME_DISTRIBUTIONS = ("uniform", "logit_normal")
COUPLINGS = ("independent", "ot", "plain_ot")


@torch.no_grad()
def ot_pairing(x0: Tensor, x1: Tensor) -> Tensor:
    """Reorder the noise ``x0`` (B, dim) so that row i goes with ``x1[i]`` under the exact
    optimal transport of the minibatch (squared Euclidean cost): with equal uniform weights the
    optimal plan is a permutation, found exactly by the assignment problem."""
    cost = torch.cdist(x1.double(), x0.double()).square().cpu().numpy()
    _, cols = linear_sum_assignment(cost)
    return x0[torch.as_tensor(cols, device=x0.device)]


@torch.no_grad()
def class_ot_pairing(x0: Tensor, x1: Tensor, y: Tensor) -> Tensor:
    """Minibatch optimal transport within each class: the data of class k are paired by
    :func:`ot_pairing` with the noise rows at their own indices, a random subset of the i.i.d.
    noise. Every class then sees noise from all of the source, as the conditional flow samples
    it; OT over the whole batch would give each class only the noise nearest its own data."""
    out = x0.clone()
    for k in torch.unique(y):
        rows = (y == k).nonzero().squeeze(1)
        out[rows] = ot_pairing(x0[rows], x1[rows])
    return out


class RectifiedFlow(ContinuousFlow):
    """Velocity matching on straight interpolations, sampled by any solver at any step count.

    Samplers: the ODE solvers, and ``sde``: Euler-Maruyama on
    ``dx = [v + g^2/2 * score] dt + g dW`` with ``g(t)^2 = noise * (1 - t)`` (the sampler's
    ``noise``; :func:`genlab.sampling.marginal_sde`), whose marginals are the flow's for every
    ``noise`` (0 is the ODE). ``g^2`` vanishes at the data end, where the score does not exist.

    Arguments:
        velocity, sampler, likelihood, dim, ema: see :class:`ContinuousFlow` (EMA weights
            sample and evaluate).
        time_distribution: ``uniform`` (U[0, 1]) or ``logit_normal`` (sigmoid of N(0, 1)).
        reflow: number of reflow rounds after the first training (>= 0).
        reflow_pairs: (noise, sample) pairs drawn for each reflow round.
        reflow_steps: optimiser steps of each reflow round.
        reflow_solver: the precise solver that integrates the pairs' noise to data.
        coupling: how noise is paired with a data batch: ``independent`` (plain rectified
            flow) or ``ot`` (minibatch optimal transport, OT-CFM: straighter paths, so fewer
            sampling steps, at the cost of an assignment per batch; for a conditional flow
            within each class, :func:`class_ot_pairing`); ``plain_ot`` is OT over the whole
            batch even when there are classes (kept to measure against: each class then
            trains on the noise nearest its own data only).
        source: the distribution at t=0 (see :class:`ContinuousFlow`): N(0, I) by default,
            or a toy, which the flow then carries to the data; ``log_prob`` ends in the
            toy's exact log-density. The ``sde`` sampler needs the Gaussian source (its score
            is that of the Gaussian path).
        classes: the number of classes of a conditional flow (0: unconditional); the run
            sets it from the data (``conditional=true``). See :class:`ContinuousFlow`.
        label_dropout: the share of training rows whose class is replaced by the null class,
            which trains the unconditional field beside the conditional one (classifier-free
            guidance).
    """

    name = "rectified_flow"
    methods = (*SOLVERS, "sde")

    def __init__(
        self,
        velocity: nn.Module,
        sampler: Solver,
        likelihood: Solver,
        time_distribution: str = "uniform",
        ema: float = 0.999,
        reflow: int = 0,
        reflow_pairs: int = 50_000,
        reflow_steps: int = 5_000,
        reflow_solver: Solver | None = None,
        coupling: str = "independent",
        dim: int = 2,
        source=None,
        classes: int = 0,
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__(velocity, sampler, likelihood, dim, ema, source, classes, label_dropout)
        if classes and reflow:
            raise ValueError(
                f"reflow of a conditional flow is not supported (reflow={reflow}, "
                f"classes={classes}): its pairs would need classes drawn as the data's"
            )
        check_choice("time distribution", time_distribution, TIME_DISTRIBUTIONS)
        check_int("reflow", reflow, 0)
        check_int("reflow_pairs", reflow_pairs, 1)
        check_int("reflow_steps", reflow_steps, 1)
        check_choice("coupling", coupling, COUPLINGS)
        self.time_distribution, self.coupling = time_distribution, coupling
        self.reflow, self.reflow_pairs, self.reflow_steps = reflow, reflow_pairs, reflow_steps
        self.reflow_solver = reflow_solver or Solver("dopri5", atol=1e-5, rtol=1e-5)

    def stages(self) -> list[Stage]:
        """Velocity matching on data, then one stage per reflow round on the pairs that the
        flow trained so far makes; with reflow every stage reports its straightness."""
        report = self.stage_report if self.reflow else None
        first = Stage("train", report=report)
        return [first] + [
            Stage(
                f"reflow {r}",
                steps=self.reflow_steps,
                loss=self.pair_loss,
                make_data=lambda g: self.make_pairs(self.reflow_pairs, g),
                report=report,
            )
            for r in range(1, self.reflow + 1)
        ]

    def stage_report(
        self, generator: torch.Generator, n: int, pairs: tuple[Tensor, Tensor] | None
    ) -> dict[str, float]:
        """Straightness on a stage's pairs (the first ``n``), or on ``n`` fresh pairs of the
        current flow after a stage on data."""
        x0, x1 = pairs if pairs is not None else self.make_pairs(n, generator)
        return {"straightness": self.straightness(x0[:n], x1[:n])}

    def _check_method(self, sampler: Sampler) -> Sampler:
        sampler = super()._check_method(sampler)
        if sampler.method == "sde" and not self.gaussian_source:
            raise ValueError(
                f"the sde sampler needs the Gaussian source (its score is the Gaussian "
                f"path's); this flow starts from {self.source}: use an ODE solver"
            )
        return sampler

    def velocity_and_score(
        self, t: Tensor, x: Tensor, field: nn.Module | None = None
    ) -> tuple[Tensor, Tensor]:
        """The field ``v`` and the score of the path's marginal at time ``t < 1``, each (B, dim).

        Along ``x_t = (1 - t) x0 + t x1`` with ``x0 ~ N(0, I)``, ``v = E[x1 - x0 | x_t]`` gives
        ``E[x0 | x_t] = x_t - t v``, and the score is
        ``E[-x0 | x_t] / (1 - t) = (t v - x_t) / (1 - t)``. One evaluation of ``field``
        (default :attr:`field`).
        """
        self.counter.count += 1
        v = (field or self.field)(t, x)
        return v, (t * v - x) / (1 - t)

    def sample_with(self, z, sampler, generator, field=None) -> Tensor:
        """``sde``: Euler-Maruyama with ``g(t)^2 = noise * (1 - t)``."""
        return marginal_sde(
            lambda t, x: self.velocity_and_score(t, x, field),
            lambda t: sampler.noise * (1 - t),
            z,
            sampler.steps,
            generator,
        )

    def sample_time(self, n: int, like: Tensor) -> Tensor:
        """``n`` training times in [0, 1] from the configured distribution, shape (n,)."""
        if self.time_distribution == "uniform":
            return torch.rand(n, device=like.device, dtype=like.dtype)
        return torch.sigmoid(torch.randn(n, device=like.device, dtype=like.dtype))

    def pair_loss(
        self, x0: Tensor, x1: Tensor, t: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        """Mean of ``|v(t, x_t) - (x1 - x0)|^2`` with ``x_t = (1 - t) x0 + t x1``.

        Arguments:
            x0: noise (B, dim); x1: data (B, dim), paired row by row.
            t: times (B,); drawn from the time distribution when ``None``.
            y: the classes (B,) the field is given (the null class where dropped), for a
                conditional flow.
        """
        check_points(x0, self.dim)
        check_points(x1, self.dim)
        if t is None:
            t = self.sample_time(len(x0), x0)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        v = self.velocity(t, xt) if y is None else self.velocity(t, xt, y)
        return (v - (x1 - x0)).square().sum(-1).mean()

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Velocity matching with fresh noise paired with the data batch, independently or by
        minibatch optimal transport (``coupling``); a conditional flow takes the batch's
        classes ``y`` and drops a ``label_dropout`` share of them to the null class."""
        given = self._training_classes(y)
        noise = self._training_noise(x)
        if self.coupling == "ot" and y is not None:
            noise = class_ot_pairing(noise, x, y)
        elif self.coupling != "independent":
            noise = ot_pairing(noise, x)
        return self.pair_loss(noise, x, y=given)

    @torch.no_grad()
    def make_pairs(
        self, n: int, generator: torch.Generator | None = None, chunk: int = 10_000
    ) -> tuple[Tensor, Tensor]:
        """Reflow pairs: ``n`` source points and where the current flow takes them.

        Deterministic given the noise: same generator state, same pairs. Returns (z, x1),
        each (n, dim).
        """
        z = self._noise(check_count(n), generator)
        x1 = torch.cat(
            [
                transport(self.field, c, 0.0, 1.0, self.reflow_solver, counter=self.counter).x
                for c in z.split(chunk)
            ]
        )
        return z, x1

    @torch.no_grad()
    def straightness(self, x0: Tensor, x1: Tensor, times: int = 16) -> float:
        """``S = E_t E |v(t, x_t) - (x1 - x0)|^2`` on pairs, with t on a midpoint grid of [0, 1].

        Zero exactly when the flow moves every pair on the straight line at constant speed.
        """
        total = 0.0
        for t in ((torch.arange(times) + 0.5) / times).tolist():
            xt = (1 - t) * x0 + t * x1
            v = self.field(torch.full((len(x0),), t, device=x0.device, dtype=x0.dtype), xt)
            total += (v - (x1 - x0)).square().sum(-1).mean().item()
        return total / times
