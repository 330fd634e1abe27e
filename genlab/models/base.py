"""The common model interface and the priors.

Every genlab model is a :class:`Model`: a ``torch.nn.Module`` with ``loss``, ``log_prob`` and
``sample`` (named as in ``torch.distributions``). The trainer, metrics, plots and report use
only this interface.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Model", "Prior", "StandardNormal", "StandardLogistic", "make_prior", "check_points"]


def check_points(x: Tensor, dim: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a batch of points of shape (B, dim)."""
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected points of shape (B, {dim}), got {shape}")


def check_count(n: int) -> int:
    """Return ``n`` if it is an int >= 1, else raise ``ValueError`` naming it."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of samples must be an int >= 1, got {n!r}")
    return n


class Model(nn.Module):
    """A generative model of points in R^dim.

    Subclasses set ``name`` and implement the three methods below. Models with an internal
    count of velocity evaluations expose it as ``nfe`` (``None`` otherwise); the trainer
    records it per step.
    """

    name: str = "model"
    dim: int = 2

    def loss(self, x: Tensor) -> Tensor:
        """Scalar training objective on a data batch ``x`` of shape (B, dim)."""
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density in nats of ``x`` (B, dim); returns shape (B,)."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples; returns shape (n, dim)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called by the trainer after every optimiser step (e.g. to update an EMA)."""

    @property
    def nfe(self) -> int | None:
        """Cumulative number of velocity evaluations, or ``None`` for models without an ODE."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class Prior(nn.Module):
    """A standard base distribution on R^dim with independent coordinates."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def log_prob(self, z: Tensor) -> Tensor:
        """Log-density of ``z`` (B, dim); returns (B,)."""
        raise NotImplementedError

    def sample(
        self, n: int, generator: torch.Generator | None = None, device=None, dtype=None
    ) -> Tensor:
        """Draw ``n`` points; returns (n, dim)."""
        raise NotImplementedError


class StandardNormal(Prior):
    """N(0, I)."""

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z * z).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, n, generator=None, device=None, dtype=None):
        return torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)


class StandardLogistic(Prior):
    """Independent standard logistic coordinates, log p(z) = -sum(softplus(z) + softplus(-z))."""

    def log_prob(self, z: Tensor) -> Tensor:
        return -(nn.functional.softplus(z) + nn.functional.softplus(-z)).sum(-1)

    def sample(self, n, generator=None, device=None, dtype=None):
        u = torch.rand(n, self.dim, generator=generator, device=device, dtype=dtype)
        tiny = torch.finfo(u.dtype).tiny
        u = u.clamp(tiny, 1 - torch.finfo(u.dtype).eps)
        return torch.log(u) - torch.log1p(-u)


PRIORS = {"normal": StandardNormal, "logistic": StandardLogistic}


def make_prior(name: str, dim: int) -> Prior:
    """Build the prior called ``name`` (``normal`` or ``logistic``)."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of: {', '.join(PRIORS)}")
    return PRIORS[name](dim)
