"""RealNVP: a stack of affine coupling layers.

References:
    Dinh, Sohl-Dickstein, Bengio. "Density estimation using Real NVP" (ICLR 2017).
"""

from __future__ import annotations

from genlab.models.invertible import InvertibleFlow
from genlab.models.layers import AffineCoupling, alternating

__all__ = ["RealNVP"]


class RealNVP(InvertibleFlow):
    """Alternating affine couplings ``y_b = x_b exp(s(x_a)) + t(x_a)``.

    Each coupling's log-det is ``sum(s)``, which varies with ``x_a``: unlike NICE, RealNVP can
    spread or squeeze mass where the data need it, so its KL has no floor above 0.

    Arguments:
        dim: dimension of the data (2 for the toys).
        couplings: number of coupling layers (alternating which half is transformed).
        hidden, depth, activation: size of each conditioner MLP (it outputs ``s`` and ``t``).
        scale_bound: each log-scale is softly clamped to ``(-scale_bound, scale_bound)``.
        prior: ``normal`` or ``logistic``.
        identity_init: start every coupling as the identity (zero last layers).
        fourier, fourier_scale: random Fourier features of ``x_a`` that each conditioner reads
            beside ``x_a`` (0: none); see :class:`genlab.models.layers.Coupling`.
        fourier_draw: how their frequencies are chosen (``random`` | ``quasi``; each coupling
            takes its own run of the quasi-random sequence).

    References:
        Dinh, Sohl-Dickstein, Bengio. "Density estimation using Real NVP" (ICLR 2017).
    """

    name = "realnvp"

    def __init__(
        self,
        dim: int = 2,
        couplings: int = 8,
        hidden: int = 64,
        depth: int = 2,
        activation: str = "silu",
        scale_bound: float = 3.0,
        prior: str = "normal",
        identity_init: bool = False,
        fourier: int = 16,
        fourier_scale: float = 0.5,
        fourier_draw: str = "quasi",
    ) -> None:
        conditioner = (
            hidden,
            depth,
            activation,
            identity_init,
            fourier,
            fourier_scale,
            fourier_draw,
        )
        layers = alternating(AffineCoupling, couplings, dim, *conditioner, scale_bound=scale_bound)
        super().__init__(dim, layers, prior)
