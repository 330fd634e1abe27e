"""The continuous normalizing flow (FFJORD-style), trained by maximum likelihood through the solver.

References:
    Grathwohl et al. (2019), "FFJORD: Free-form Continuous Dynamics for Scalable Reversible
    Generative Models".
    Finlay et al. (2020), "How to train your neural ODE: the world of Jacobian and kinetic
    regularization" (RNODE).
"""

from __future__ import annotations

from torch import Tensor, nn

from genlab.checks import check_choice, check_positive
from genlab.models.base import check_points
from genlab.models.flow import ContinuousFlow
from genlab.ode import DIVERGENCES, Solver, transport_logdet

__all__ = ["CNF"]


class CNF(ContinuousFlow):
    """Maximises ``log p(x) = log N(z; 0, I) + ∫_1^0 div v dt`` of data, solved from t=1 to 0.

    Arguments:
        velocity, sampler, likelihood, dim: see :class:`ContinuousFlow`.
        train_solver: the solver of the training solves (tolerances, adjoint or not).
        divergence: ``exact`` (autograd-free forward-mode Jacobian in 2D) or ``hutchinson``
            (one noise draw per solve) during training; evaluation is always exact.
        kinetic: weight of the kinetic-energy regulariser ``∫ |v|^2 dt`` (RNODE).
        jacobian: weight of the Jacobian-Frobenius regulariser ``∫ ||dv/dx||_F^2 dt`` (RNODE).
    """

    name = "cnf"

    def __init__(
        self,
        velocity: nn.Module,
        sampler: Solver,
        likelihood: Solver,
        train_solver: Solver,
        divergence: str = "exact",
        kinetic: float = 0.003,
        jacobian: float = 0.003,
        dim: int = 2,
    ) -> None:
        super().__init__(velocity, sampler, likelihood, dim)
        check_choice("divergence", divergence, DIVERGENCES)
        check_positive("kinetic", kinetic, zero=True)
        check_positive("jacobian", jacobian, zero=True)
        self.train_solver = train_solver
        self.divergence = divergence
        self.kinetic, self.jacobian = kinetic, jacobian

    def loss(self, x: Tensor) -> Tensor:
        """Negative mean log-likelihood (nats) plus the weighted RNODE regularisers."""
        check_points(x, self.dim)
        regularize = self.kinetic > 0 or self.jacobian > 0
        sol = transport_logdet(
            self.velocity,
            x,
            1.0,
            0.0,
            self.train_solver,
            divergence=self.divergence,
            regularize=regularize,
            counter=self.counter,
        )
        loss = -(self.prior.log_prob(sol.x) + sol.delta_logp).mean()
        if regularize:
            loss = loss + self.kinetic * sol.kinetic.mean()
            loss = loss + self.jacobian * sol.jacobian_frobenius.mean()
        return loss
