"""NICE: additive coupling layers, a diagonal scaling layer, exact inverse and likelihood.

References:
    Dinh, Krueger, Bengio. "NICE: Non-linear Independent Components Estimation" (2014).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genlab.checks import check_int
from genlab.models.base import Layered, Model, check_count, check_points, make_prior
from genlab.nn import MLP, check_fourier, fourier_features

__all__ = ["AdditiveCoupling", "DiagonalScaling", "NICE"]


class AdditiveCoupling(nn.Module):
    """``y_b = x_b + m(x_a)``, ``y_a = x_a``: a shear with Jacobian determinant exactly 1.

    Arguments:
        dim: dimension of the points.
        parity: which half is shifted: coordinates ``i`` with ``i % 2 == parity`` form ``b``.
        hidden, depth, activation: the coupling MLP ``m``.
        identity_init: start ``m``'s last layer at zero (the layer starts as the identity);
            else at torch's default initialisation of a linear layer.
        fourier: number of random Fourier features of ``x_a`` that ``m`` reads beside ``x_a``
            (0: ``x_a`` only); ``m`` still depends on ``x_a`` alone, so the inverse stays exact.
        fourier_scale: standard deviation of their frequencies (cycles per unit of ``x_a``).
    """

    def __init__(
        self,
        dim: int,
        parity: int,
        hidden: int = 128,
        depth: int = 3,
        activation: str = "relu",
        identity_init: bool = False,
        fourier: int = 0,
        fourier_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_fourier(fourier, fourier_scale)
        self.b = slice(parity, None, 2)  # shifted coordinates
        self.a = slice(1 - parity, None, 2)  # coordinates the MLP reads
        n_a, n_b = len(range(dim)[self.a]), len(range(dim)[self.b])
        # A buffer: saved with the weights, so a loaded model has the same features. None
        # without features: a checkpoint without the buffer loads.
        frequencies = torch.randn(fourier, n_a) * fourier_scale if fourier else None
        self.register_buffer("fourier_b", frequencies)
        self.m = MLP(n_a + 2 * fourier, n_b, hidden, depth, activation, zero_last=identity_init)

    def _shift(self, x: Tensor, sign: float) -> Tensor:
        y = x.clone()
        y[:, self.b] += sign * self.m(fourier_features(x[:, self.a], self.fourier_b))
        return y

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(y, log_det)`` with ``log_det`` exactly zero, shape (B,)."""
        return self._shift(x, 1.0), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        """Exact inverse: ``x_b = y_b - m(y_a)``."""
        return self._shift(y, -1.0)


class DiagonalScaling(nn.Module):
    """``y = x * exp(s)`` with learned log-scales ``s``; log-det ``sum(s) = sum(log|scale|)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale)


class NICE(Model, Layered):
    """A stack of alternating additive couplings followed by one diagonal scaling layer.

    ``forward`` maps data to latent, ``z = S(c_K(...c_1(x)))``; the density is
    ``log p(x) = log p_prior(z) + sum(log_scale)``, since every coupling has unit determinant.

    Arguments:
        dim: dimension of the data (2 for the toys).
        couplings: number of coupling layers (alternating which half is shifted).
        hidden, depth, activation: size of each coupling MLP.
        prior: ``normal`` or ``logistic``.
        fourier, fourier_scale: random Fourier features of ``x_a`` that each coupling MLP
            reads beside ``x_a`` (see :class:`AdditiveCoupling`; 0: none).
        identity_init: start every coupling as the identity (zero last layers). Off by default:
            from torch's default initialisation NICE fits thin structure (2spirals) better in a
            short budget. On rings and circles ``E[x_b | x_a] = 0`` in every frame, which pulls
            each shift of raw ``x_a`` back to zero from either start; Fourier features of
            ``x_a`` let the shifts move.

    References:
        Dinh, Krueger, Bengio. "NICE: Non-linear Independent Components Estimation" (2014).
    """

    name = "nice"
    constant_log_det = True  # the couplings' log-det is 0, the scaling's a constant

    def __init__(
        self,
        dim: int = 2,
        couplings: int = 16,
        hidden: int = 64,
        depth: int = 2,
        activation: str = "tanh",
        prior: str = "normal",
        identity_init: bool = False,
        fourier: int = 16,
        fourier_scale: float = 0.5,
    ) -> None:
        super().__init__()
        check_int("couplings", couplings, 1)
        self.dim = dim
        self.couplings = nn.ModuleList(
            AdditiveCoupling(
                dim, k % 2, hidden, depth, activation, identity_init, fourier, fourier_scale
            )
            for k in range(couplings)
        )
        self.scaling = DiagonalScaling(dim)
        self.prior = make_prior(prior, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent. ``x`` (B, dim) -> ``(z (B, dim), log_det (B,))``."""
        check_points(x, self.dim)
        for layer in self.couplings:
            x, _ = layer(x)  # log-det exactly 0
        return self.scaling(x)

    def _inverse_layers(self) -> tuple[nn.Module, ...]:
        """The layers of the latent-to-data map, in the order it applies their inverses."""
        return (self.scaling, *reversed(self.couplings))

    def inverse(self, z: Tensor) -> Tensor:
        """Latent to data. ``z`` (B, dim) -> ``x`` (B, dim)."""
        check_points(z, self.dim)
        for layer in self._inverse_layers():
            z = layer.inverse(z)
        return z

    def log_prob(self, x: Tensor) -> Tensor:
        z, log_det = self(x)
        return self.prior.log_prob(z) + log_det

    def loss(self, x: Tensor) -> Tensor:
        """Negative mean log-likelihood in nats."""
        return -self.log_prob(x).mean()

    def _noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        p = self.scaling.log_scale
        return self.prior.sample(check_count(n), generator, device=p.device, dtype=p.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.inverse(self._noise(n, generator))

    def layer_states(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` prior points, then the points after the scaling layer's inverse and after
        each coupling's inverse, last coupling first. Returns (couplings + 2, n, dim); the last
        entry is exactly ``sample(n, generator)``."""
        states = [self._noise(n, generator)]
        for layer in self._inverse_layers():
            states.append(layer.inverse(states[-1]))
        return torch.stack(states)
