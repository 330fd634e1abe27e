"""The eight 2D toy distributions: i.i.d. samplers with exact log-densities.

These are the standard 2D toys of FFJORD, taken in their infinite-sample limit: where the
original code spaces points evenly along a curve, the curve parameter is drawn uniformly.
Every toy has a ``sample(n, generator)``, an exact ``log_prob(x)`` (nats), a grid
``entropy()``, the exact ``mean`` and ``covariance`` implied by its definition and its
``constant_log_det_floor``, the lowest KL a constant-Jacobian flow (NICE) can reach on it.
The seven toys made of natural parts (modes, arms, rings, squares) have them as classes:
``classes``, ``class_probs``, ``sample_labelled(n, generator) -> (x, y)`` and the exact
conditional density ``log_prob(x, y)``. ``Gaussian`` (a diagonal Gaussian, not one of the
eight) is the known answer of the transport tests. docs/toys.md tabulates the eight and says
how to add one.

How the densities are computed (all in float64):

- closed form: 8gaussians (a Gaussian mixture), checkerboard (uniform on 8 squares), rings
  and circles (the angle integrated out with the modified Bessel function I0);
- 1D quadrature over the curve parameter: moons, 2spirals and swissroll. The nodes are
  composite Gauss-Legendre panels of equal arc length, fine enough that the quadrature error
  in ``log p`` is below 1e-9 where the data lie (checked on samples against a 4x finer rule
  in the tests). It grows far from the curves, where the density is negligible: to about
  1e-5 nats where ``log p ~ -50`` and 1e-2 in the corners of the plotting box;
- pinwheel: a sum over every preimage of the map from the Gaussian features to the plane,
  found by a safeguarded Newton solve of a 1D equation in the polar angle.

References:
    Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud. FFJORD: Free-form Continuous Dynamics
    for Scalable Reversible Generative Models. ICLR 2019 (the toy generators).
"""

from __future__ import annotations

from genlab.data.base import Toy
from genlab.data.curves import Moons, SwissRoll, TwoSpirals
from genlab.data.mixtures import Checkerboard, Circles, EightGaussians, Gaussian, Rings
from genlab.data.pinwheel import Pinwheel

__all__ = [
    "Toy",
    "Gaussian",
    "EightGaussians",
    "Moons",
    "Checkerboard",
    "TwoSpirals",
    "Pinwheel",
    "Rings",
    "Circles",
    "SwissRoll",
]
