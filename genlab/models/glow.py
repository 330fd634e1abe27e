"""Glow in 2D: steps of ActNorm, an invertible linear map and an affine coupling.

References:
    Kingma, Dhariwal. "Glow: Generative Flow with Invertible 1x1 Convolutions" (NeurIPS 2018).
"""

from __future__ import annotations

from genlab.checks import check_int
from genlab.models.invertible import InvertibleFlow
from genlab.models.layers import ActNorm, AffineCoupling, LULinear

__all__ = ["Glow"]


class Glow(InvertibleFlow):
    """``steps`` Glow steps, each ActNorm, then ``W x`` with ``W = P L U``, then an affine
    coupling, in the data-to-latent order.

    On a 2-channel point Glow's invertible 1x1 convolution is a learned 2x2 matrix: it turns
    the frame the next coupling splits, where NICE and RealNVP only swap the two coordinates.
    ActNorm normalises each coordinate from the first training batch (its statistics are
    saved, so a resumed run is not initialised again).

    Arguments:
        dim: dimension of the data (2 for the toys).
        steps: number of Glow steps.
        hidden, depth, activation: size of each coupling's conditioner MLP.
        scale_bound: each log-scale is softly clamped to ``(-scale_bound, scale_bound)``.
        prior: ``normal`` or ``logistic``.
        identity_init: start every coupling as the identity (zero last layers).
        linear_start: how each linear map starts: ``even`` (2D), a rotation by
            ``pi / steps``, which spreads the directions the couplings transform evenly over
            the half-circle, the same for every seed; ``random``, a rotation drawn with the
            seed (Glow's own start); ``fixed``, a rotation per step drawn once for every seed;
            ``identity``. See :class:`genlab.models.layers.LULinear`.
        fourier, fourier_scale: random Fourier features of ``x_a`` that each conditioner reads
            beside ``x_a`` (0: none); see :class:`genlab.models.layers.Coupling`.
        fourier_draw: how their frequencies are chosen (``random`` | ``quasi``; each coupling
            takes its own run of the quasi-random sequence).

    References:
        Kingma, Dhariwal. "Glow: Generative Flow with Invertible 1x1 Convolutions" (NeurIPS 2018).
    """

    name = "glow"

    def __init__(
        self,
        dim: int = 2,
        steps: int = 8,
        hidden: int = 64,
        depth: int = 2,
        activation: str = "silu",
        scale_bound: float = 3.0,
        prior: str = "normal",
        identity_init: bool = False,
        linear_start: str = "even",
        fourier: int = 16,
        fourier_scale: float = 0.5,
        fourier_draw: str = "quasi",
    ) -> None:
        check_int("steps", steps, 1)
        conditioner = (
            hidden,
            depth,
            activation,
            identity_init,
            fourier,
            fourier_scale,
            fourier_draw,
        )
        layers = []
        for k in range(steps):  # LU's start and the coupling's draws, step by step
            coupling = AffineCoupling(
                dim, k % 2, *conditioner, fourier_block=k, scale_bound=scale_bound
            )
            layers += [ActNorm(dim), LULinear(dim, linear_start, block=k, blocks=steps), coupling]
        super().__init__(dim, layers, prior)
