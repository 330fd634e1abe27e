"""The discrete normalizing flow: a stack of invertible layers on a standard prior.

NICE, RealNVP, Glow and the neural spline flow are each one :class:`InvertibleFlow`; they
differ only in the layers they stack (:mod:`genlab.models.layers`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from genlab.models.base import Layered, Model, check_count, check_points, make_prior

__all__ = ["InvertibleFlow"]


class InvertibleFlow(Model, Layered):
    """``z = f_L(...f_1(x))`` with invertible layers ``f_i`` and a prior on ``z``.

    By the change of variables, ``log p(x) = log p_prior(z) + sum_i log|det df_i/dx|``, the sum
    of the layers' log-dets; sampling pushes prior points through the inverses, last layer
    first.

    Arguments:
        dim: dimension of the data.
        layers: the layers in the data-to-latent order, each with
            ``forward(x) -> (y, log_det)`` and ``inverse(y) -> x``.
        prior: ``normal`` or ``logistic``.
    """

    def __init__(self, dim: int, layers: Iterable[nn.Module], prior: str = "normal") -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(layers)
        self.prior = make_prior(prior, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent. ``x`` (B, dim) -> ``(z (B, dim), log_det (B,))``."""
        check_points(x, self.dim)
        log_det = x.new_zeros(len(x))
        for layer in self.layers:
            x, part = layer(x)
            log_det = log_det + part
        return x, log_det

    def inverse(self, z: Tensor) -> Tensor:
        """Latent to data. ``z`` (B, dim) -> ``x`` (B, dim)."""
        check_points(z, self.dim)
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def log_prob(self, x: Tensor) -> Tensor:
        z, log_det = self(x)
        return self.prior.log_prob(z) + log_det

    def loss(self, x: Tensor) -> Tensor:
        """Negative mean log-likelihood in nats."""
        return -self.log_prob(x).mean()

    def _noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        p = next(self.parameters())
        return self.prior.sample(check_count(n), generator, device=p.device, dtype=p.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.inverse(self._noise(n, generator))

    def layer_states(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` prior points, then the points after each layer's inverse, last layer first.
        Returns (layers + 1, n, dim); the last entry is exactly ``sample(n, generator)``."""
        states = [self._noise(n, generator)]
        for layer in reversed(self.layers):
            states.append(layer.inverse(states[-1]))
        return torch.stack(states)
