"""A one-step generator distilled from a rectified flow's own ODE.

The rectified flow trains as usual (and straightens by ``reflow`` rounds, if any). Then
``distill`` draws ``distill_pairs`` noise points, carries them to data with a precise solve
of the flow's ODE (the teacher's endpoints), and fine-tunes the field at t=0 alone so that
one Euler step lands there:

    ``min E |z + v(0, z) - x1(z)|^2``,  ``x1(z)`` the ODE's endpoint of ``z``,

Liu et al.'s (2022) distillation of a k-rectified flow. The student starts from the teacher's
own field, so the one-step map starts as the teacher's Euler step and only has to learn what
the path's curvature takes away. ``sample(n)`` is that one step: one network evaluation.
More Euler steps (``steps=k``) follow the fine-tuned field, whose t > 0 part is the
teacher's, changed only as far as the network shares weights across t.

The model samples; it has no density (``has_density`` is false): the KL that the field's ODE
would give is that of the multi-step teacher, not of the one-step samples. The yardstick
scores the samples by W2 and the truth's cross-entropy.

Reference:
    Liu, Gong, Liu (2022), "Flow Straight and Fast: Learning to Generate and Transfer Data with
    Rectified Flow" (section 2.3, distillation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genlab.checks import check_int
from genlab.models.base import Stage, check_points
from genlab.models.rectified_flow import RectifiedFlow
from genlab.ode import Solver
from genlab.sampling import Sampler

__all__ = ["DistilledFlow"]


class DistilledFlow(RectifiedFlow):
    """A rectified flow (and its reflow rounds), then a last stage that distils one Euler step.

    Arguments:
        distill_pairs: (noise, endpoint) pairs the distillation trains on.
        distill_steps: its optimiser steps; ``None`` takes the run's ``train.steps`` (and a
            time budget, ``train.max_seconds``, binds it as it binds every stage).
        others: see :class:`genlab.models.rectified_flow.RectifiedFlow`; ``reflow_solver`` also
            integrates the distillation's pairs.
    """

    name = "distill"
    has_density = False
    quality_steps = (1, 2, 4, 10, 20, 100)

    def __init__(
        self,
        velocity: nn.Module,
        sampler: Sampler | Solver,
        likelihood: Solver,
        time_distribution: str = "uniform",
        ema: float = 0.999,
        reflow: int = 0,
        reflow_pairs: int = 50_000,
        reflow_steps: int = 5_000,
        reflow_solver: Solver | None = None,
        coupling: str = "independent",
        distill_pairs: int = 50_000,
        distill_steps: int | None = None,
        dim: int = 2,
    ) -> None:
        super().__init__(
            velocity,
            sampler,
            likelihood,
            time_distribution,
            ema,
            reflow,
            reflow_pairs,
            reflow_steps,
            reflow_solver,
            coupling,
            dim,
        )
        self.distill_pairs = check_int("distill_pairs", distill_pairs, 1)
        self.distill_steps = check_int("distill_steps", distill_steps, 1, none=True)

    def stages(self) -> list[Stage]:
        """The rectified flow's stages, then ``distill`` on the last flow's ODE pairs."""
        return super().stages() + [
            Stage(
                "distill",
                steps=self.distill_steps,
                loss=self.distill_loss,
                make_data=lambda g: self.make_pairs(self.distill_pairs, g),
            )
        ]

    def distill_loss(self, z: Tensor, x1: Tensor) -> Tensor:
        """Mean of ``|z + v(0, z) - x1|^2`` on pairs of noise ``z`` and endpoints ``x1``."""
        check_points(z, self.dim)
        check_points(x1, self.dim)
        t = torch.zeros(len(z), device=z.device, dtype=z.dtype)
        return (z + self.velocity(t, z) - x1).square().sum(-1).mean()

    def log_prob(self, x: Tensor, t: float = 1.0) -> Tensor:
        raise NotImplementedError(
            "distill has no density: it samples in one step and the yardstick scores it by W2 "
            "and the truth's cross-entropy of its samples"
        )
