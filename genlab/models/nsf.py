"""The neural spline flow: a stack of rational-quadratic spline couplings.

References:
    Durkan, Bekasov, Murray, Papamakarios. "Neural Spline Flows" (NeurIPS 2019).
"""

from __future__ import annotations

from genlab.models.invertible import InvertibleFlow
from genlab.models.layers import SplineCoupling, alternating

__all__ = ["NSF"]


class NSF(InvertibleFlow):
    """Alternating couplings whose transform is a monotone rational-quadratic spline.

    Each coupling bends ``x_b`` through a spline of ``bins`` bins on ``[-bound, bound]``, its
    knots and slopes set by ``x_a``, and leaves it as it is outside (linear tails). A spline
    can open a gap or pile up mass anywhere along a line, which an affine map cannot.

    Arguments:
        dim: dimension of the data (2 for the toys).
        couplings: number of coupling layers (alternating which half is transformed).
        bins: bins of each spline.
        bound: the splines act on ``[-bound, bound]``; the identity outside.
        hidden, depth, activation: size of each conditioner MLP.
        prior: ``normal`` or ``logistic``.
        identity_init: start every coupling as the identity (zero last layers).
        fourier, fourier_scale: random Fourier features of ``x_a`` that each conditioner reads
            beside ``x_a`` (0: none); see :class:`genlab.models.layers.Coupling`.
        fourier_draw: how their frequencies are chosen (``random`` | ``quasi``; each coupling
            takes its own run of the quasi-random sequence).

    References:
        Durkan, Bekasov, Murray, Papamakarios. "Neural Spline Flows" (NeurIPS 2019).
    """

    name = "nsf"

    def __init__(
        self,
        dim: int = 2,
        couplings: int = 4,
        bins: int = 32,
        bound: float = 5.0,
        hidden: int = 64,
        depth: int = 2,
        activation: str = "tanh",
        prior: str = "normal",
        identity_init: bool = True,
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
        layers = alternating(SplineCoupling, couplings, dim, *conditioner, bins=bins, bound=bound)
        super().__init__(dim, layers, prior)
