"""The closed-form toys: 8gaussians, checkerboard, rings and circles.

Each density is exact in closed form: a Gaussian mixture, a uniform on squares, or a ring
mixture with the angle integrated out through the Bessel function I0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from genlab.data.base import F64, Pair, Toy, _isotropic_cov, _rand, _randint, _randn

__all__ = ["Gaussian", "EightGaussians", "Checkerboard", "Rings", "Circles"]


class Gaussian(Toy):
    """A Gaussian with diagonal covariance, ``x = mean + std * eps``, ``eps ~ N(0, I)``.

    Not one of the eight toys: the distribution whose optimal transport to another such
    Gaussian is known in closed form (``T(x) = m' + (s' / s)(x - m)``, coordinate by
    coordinate), the known answer the tests hold a transport to.
    ``log p(x) = -sum_i ((x_i - m_i)^2 / (2 s_i^2) + log s_i) - log 2 pi``; entropy
    ``1 + log 2 pi + sum_i log s_i``. The box is ``|m| + 5 max(s)``.

    Arguments:
        mean, std: a pair each (std > 0).
    """

    name = "diagonal_gaussian"  # not "gaussian": that is the standard normal source
    floor_at_defaults = 0.0  # a Gaussian is an affine map of N(0, I): any mean and std

    def __init__(self, mean: Pair = (0.0, 0.0), std: Pair = (1.0, 1.0)) -> None:
        self.mean_ = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean_) != 2 or len(self.std) != 2 or min(self.std) <= 0:
            raise ValueError(f"a Gaussian needs a mean pair and a std pair > 0, got {mean}, {std}")
        self.bound = max(abs(m) for m in self.mean_) + 5 * max(self.std)

    def __repr__(self) -> str:
        return f"Gaussian(mean={self.mean_}, std={self.std})"

    @property
    def mean(self) -> Pair:
        return self.mean_

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        return ((self.std[0] ** 2, 0.0), (0.0, self.std[1] ** 2))

    def _sample(self, n, g, device):
        m, s = (torch.tensor(v, dtype=F64, device=device) for v in (self.mean_, self.std))
        return m + s * _randn(n, g, device, 2)

    def _log_prob(self, x):
        m, s = (torch.tensor(v, dtype=F64, device=x.device) for v in (self.mean_, self.std))
        return -(((x - m) / s).square() / 2 + s.log()).sum(1) - math.log(2 * math.pi)


class EightGaussians(Toy):
    """Gaussians on a circle: eight by default, FFJORD's.

    ``x = c_k + sigma * eps``, ``eps ~ N(0, I)``, ``k`` uniform in ``0..modes-1`` (equal
    weights), ``c_k = radius (cos 2 pi k / modes, sin 2 pi k / modes)``;
    ``log p(x) = logsumexp_k(-|x - c_k|^2 / (2 sigma^2)) - log modes - log(2 pi sigma^2)``.
    Classes: the mode ``k``, ``p(x | k) = N(c_k, sigma^2 I)``. At the defaults (FFJORD's
    centres at radius 4 and std 0.5, both divided by 1.414, not sqrt 2): entropy 2.8319 nats,
    constant-Jacobian floor 0.0008 nats.

    Arguments:
        radius: the centres' distance from the origin (default 4 / 1.414).
        sigma: each Gaussian's standard deviation (default 0.5 / 1.414).
        modes: the number of Gaussians (default 8).

    References:
        Grathwohl et al. 2019, FFJORD (the "8gaussians" toy).
    """

    name = "8gaussians"
    bound = 5.0
    floor_at_defaults = 0.0008
    defaults = {"radius": 4 / 1.414, "sigma": 0.5 / 1.414, "modes": 8}

    def __init__(
        self, radius: float = 4 / 1.414, sigma: float = 0.5 / 1.414, modes: int = 8
    ) -> None:
        self._set_constants(radius=radius, sigma=sigma, modes=modes)

    @property
    def classes(self) -> int:  # the mode
        return self.modes

    def extent(self) -> float:
        return self.radius + 5.3 * self.sigma

    def _centres(self, device=None) -> Tensor:
        a = torch.arange(self.modes, dtype=F64, device=device) * (2 * math.pi / self.modes)
        return self.radius * torch.stack([a.cos(), a.sin()], -1)

    @property
    def mean(self) -> Pair:
        if self.modes == 1:
            return (self.radius, 0.0)
        return (0.0, 0.0)

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        c = self._centres().numpy()
        m = c.mean(0)
        spread = (c - m).T @ (c - m) / self.modes + self.sigma**2 * np.eye(2)
        (a, b), (c, d) = spread.tolist()
        return ((a, b), (c, d))

    def _sample_labelled(self, n, g, device):
        k = _randint(self.modes, n, g, device)
        return self._centres(device)[k] + self.sigma * _randn(n, g, device, 2), k

    def _class_log_prob(self, x, k):
        d2 = (x - self._centres(x.device)[k]).square().sum(-1)
        s2 = self.sigma**2
        return -d2 / (2 * s2) - math.log(2 * math.pi * s2)

    def _log_prob(self, x):
        d2 = (x[:, None, :] - self._centres(x.device)).square().sum(-1)
        s2 = self.sigma**2
        return (
            torch.logsumexp(-d2 / (2 * s2), 1) - math.log(self.modes) - math.log(2 * math.pi * s2)
        )


class Checkerboard(Toy):
    """Uniform on the 8 black squares of a 4 x 4 checkerboard whose squares have side ``scale``.

    FFJORD: ``x1 = 4U - 2``, ``x2 = U' - 2 randint(0, 2) + (floor(x1) mod 2)``, point * 2
    (``scale`` = 2, a board of side 8). The support is the union of half-open squares
    ``[s i, s (i+1)) x [s j, s (j+1))`` with ``i, j in {-2, ..., 1}`` and ``i + j`` even;
    ``log p = -log(8 s^2)`` there, ``-inf`` elsewhere.
    Boundary convention: each square contains its lower and left edges, not its upper and
    right ones (as the sampler, which draws ``U`` in [0, 1)). Float32 samples are clamped
    into their square so that rounding never moves one onto an excluded edge.
    No noise. Entropy ``log(8 s^2)`` (3.4657 nats at s = 2); constant-Jacobian floor exactly
    ``1 - log 2`` (0.3069 nats) at any scale, as for any uniform density (see ``Toy``).
    Classes: the square, numbered by its column ``i`` then its row ``j`` (:attr:`squares`),
    each uniform of density ``1 / s^2``.

    Arguments:
        scale: the side of a square (default 2).

    References:
        Grathwohl et al. 2019, FFJORD (the "checkerboard" toy).
    """

    name = "checkerboard"
    bound = 4.0
    floor_at_defaults = 1 - math.log(2)
    defaults = {"scale": 2.0}
    classes = 8
    #: ``(i, j)`` of each class's square ``[s i, s (i+1)) x [s j, s (j+1))``.
    squares = tuple((i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0)

    def __init__(self, scale: float = 2.0) -> None:
        self._set_constants(scale=scale)

    @property
    def constant_log_det_floor(self) -> float:
        return self.floor_at_defaults  # 1 - log 2 for any uniform density

    def extent(self) -> float:
        return 2 * self.scale

    @property
    def mean(self) -> Pair:
        return (0.0, 0.0)

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        # at s = 2 each coordinate is uniform on [-4, 4); the column means -3, -1, 1, 3 pair
        # with the row means -1, 1, -1, 1: E[x1 x2] = (3 - 1 - 1 + 3) / 4 = 1; all scale by s^2/4
        q = self.scale**2 / 4
        return ((16 / 3 * q, q), (q, 16 / 3 * q))

    def _sample(self, n, g, device):
        x1 = 4 * _rand(n, g, device) - 2
        x2 = _rand(n, g, device) - 2 * _randint(2, n, g, device) + torch.floor(x1) % 2
        x = self.scale * torch.stack([x1, x2], -1)
        # the square's edges in float64, then the float32 values just inside them
        lower = self.scale * torch.floor(x / self.scale)
        upper = lower + self.scale
        lo, hi = lower.float(), upper.float()
        lo = torch.where(lo.double() < lower, torch.nextafter(lo, lo.new_tensor(math.inf)), lo)
        hi = torch.where(hi.double() >= upper, torch.nextafter(hi, hi.new_tensor(-math.inf)), hi)
        return torch.minimum(torch.maximum(x.float(), lo), hi)

    def _sample_labelled(self, n, g, device):
        x = self._sample(n, g, device)
        ij = torch.floor(x.double() / self.scale).long() + 2  # column and row, 0..3
        # the black squares of column i, in row order, are every other row from i % 2
        return x, 2 * ij[:, 0] + ij[:, 1] // 2

    def _class_log_prob(self, x, k):
        i, j = self.squares[k]
        ij = torch.floor(x / self.scale)
        inside = (ij[:, 0] == i) & (ij[:, 1] == j)
        return x.new_full((len(x),), -math.inf).masked_fill_(inside, -2 * math.log(self.scale))

    def _log_prob(self, x):
        ij = torch.floor(x / self.scale)
        inside = ((ij >= -2) & (ij <= 1)).all(1) & (ij.sum(1) % 2 == 0)
        area = 8 * self.scale**2
        return x.new_full((len(x),), -math.inf).masked_fill_(inside, -math.log(area))


class _RadialMixture(Toy):
    """Equal mixture of rings of radii ``r_k`` with a uniform angle, plus N(0, sigma^2 I).

    Integrating the angle out gives, with ``rho = |x|``,
    ``p(x) = (1/K) sum_k exp(-(rho^2 + r_k^2) / (2 sigma^2)) I0(rho r_k / sigma^2)
    / (2 pi sigma^2)``,
    evaluated stably as ``-(rho - r_k)^2 / (2 sigma^2) + log i0e(rho r_k / sigma^2)`` with
    the exponentially scaled Bessel function ``i0e(z) = exp(-z) I0(z)``.

    Arguments:
        radii: the rings' radii, in class order (each > 0).
        sigma: the standard deviation of the Gaussian noise.

    References:
        Grathwohl et al. 2019, FFJORD (the "rings" and "circles" toys).
    """

    def __init__(self, radii: tuple[float, ...] | None = None, sigma: float | None = None) -> None:
        d = self.defaults
        radii = d["radii"] if radii is None else radii
        self._set_constants(radii=radii, sigma=d["sigma"] if sigma is None else sigma)

    def _check_constants(self) -> None:
        if not self.radii:
            raise ValueError(f"{self.name} radii must list at least one radius, got ()")
        super()._check_constants()

    @property
    def classes(self) -> int:  # the ring
        return len(self.radii)

    def extent(self) -> float:
        return max(self.radii) + 5.3 * self.sigma

    @property
    def mean(self) -> Pair:
        return (0.0, 0.0)

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        return _isotropic_cov(
            sum(r * r for r in self.radii) / (2 * len(self.radii)) + self.sigma**2
        )

    def _sample_labelled(self, n, g, device):
        k = _randint(len(self.radii), n, g, device)
        r = torch.tensor(self.radii, dtype=F64, device=device)[k]
        a = 2 * math.pi * _rand(n, g, device)
        noise = self.sigma * _randn(n, g, device, 2)
        return r[:, None] * torch.stack([a.cos(), a.sin()], -1) + noise, k

    def _ring_terms(self, x, r):
        """``log p(x | ring r) + log(2 pi sigma^2)`` (a column for each radius of ``r``)."""
        rho = x.norm(dim=1, keepdim=True)
        s2 = self.sigma**2
        return -(rho - r).square() / (2 * s2) + torch.special.i0e(rho * r / s2).log()

    def _log_prob(self, x):
        r = torch.tensor(self.radii, dtype=F64, device=x.device)
        t = self._ring_terms(x, r)
        return (
            torch.logsumexp(t, 1)
            - math.log(len(self.radii))
            - math.log(2 * math.pi * self.sigma**2)
        )

    def _class_log_prob(self, x, k):
        r = torch.tensor(self.radii[k : k + 1], dtype=F64, device=x.device)
        return self._ring_terms(x, r)[:, 0] - math.log(2 * math.pi * self.sigma**2)


class Rings(_RadialMixture):
    """Concentric rings: by default FFJORD's four, radii 3, 2.25, 1.5, 0.75, noise std 0.08.

    ``x = r_k (cos a, sin a) + N(0, sigma^2 I)``, ``a ~ U[0, 2 pi)``, the ring ``k`` uniform
    (density: see ``_RadialMixture``, which also lists the arguments). At the defaults:
    entropy 2.6232 nats, constant-Jacobian floor 0.0303 nats. Classes: the ring, in the order
    of the radii.

    References:
        Grathwohl et al. 2019, FFJORD (the "rings" toy).
    """

    name = "rings"
    bound = 4.0
    floor_at_defaults = 0.0303
    defaults = {"radii": (3.0, 2.25, 1.5, 0.75), "sigma": 0.08}


class Circles(_RadialMixture):
    """Two circles: by default radii 3 and 1.5, equal weights, uniform angle, noise std 0.24.

    sklearn ``make_circles(factor=0.5, noise=0.08) * 3``:
    ``x = r_k (cos a, sin a) + N(0, sigma^2 I)``, ``a ~ U[0, 2 pi)`` (density: see
    ``_RadialMixture``, which also lists the arguments). At the defaults: entropy 3.2681
    nats, constant-Jacobian floor 0.0288 nats. Classes: the circle, the outer first.

    References:
        Grathwohl et al. 2019, FFJORD (the "circles" toy).
    """

    name = "circles"
    bound = 4.5
    floor_at_defaults = 0.0288
    defaults = {"radii": (3.0, 1.5), "sigma": 0.24}
