"""The eight 2D toy distributions: i.i.d. samplers with exact log-densities.

These are the standard 2D toys of FFJORD, taken in their infinite-sample limit: where the
original code spaces points evenly along a curve, the curve parameter is drawn uniformly.
Every toy has a ``sample(n, generator)``, an exact ``log_prob(x)`` (nats), a grid
``entropy()`` and the exact ``mean`` and ``covariance`` implied by its definition.

How the densities are computed (all in float64):

- closed form: 8gaussians (a Gaussian mixture), checkerboard (uniform on 8 squares), rings
  and circles (the angle integrated out with the modified Bessel function I0);
- 1D quadrature over the curve parameter: moons, 2spirals and swissroll. The nodes are
  composite Gauss-Legendre panels of equal arc length, fine enough that the quadrature error
  in ``log p`` is far below 1e-9 on the plotting box (checked against a 4x finer rule in the
  tests);
- pinwheel: a sum over every preimage of the map from the Gaussian features to the plane,
  found by a safeguarded Newton solve of a 1D equation in the polar angle.

References:
    Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud. FFJORD: Free-form Continuous Dynamics
    for Scalable Reversible Generative Models. ICLR 2019 (the toy generators).
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Toy",
    "EightGaussians",
    "Moons",
    "Checkerboard",
    "TwoSpirals",
    "Pinwheel",
    "Rings",
    "Circles",
    "SwissRoll",
    "TOYS",
    "get_toy",
]

F64 = torch.float64
ENTROPY_STEP = 0.01  # grid step h of entropy()
_BLOCK = 1 << 19  # elements of one (points x nodes) block: bounds memory, stays in cache
_LOG2PI = math.log(2 * math.pi)

Pair = tuple[float, float]


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"number of samples must be an int >= 1, got {n!r}")
    return int(n)


def _midpoints(bound: float, h: float) -> Tensor:
    m = round(2 * bound / h)
    return -bound + h * (torch.arange(m, dtype=F64) + 0.5)


class Toy:
    """A 2D toy distribution: sampler, exact log-density, grid entropy, exact moments.

    Subclasses set ``name`` and ``bound`` and implement ``_sample`` (float64 points on a
    device) and ``_log_prob`` (float64 in, float64 out), ``mean`` and ``covariance``.
    ``bound`` is the half-width of a square box ``[-bound, bound]^2`` that holds all but
    less than 1e-6 of the mass; plots and grid integration use it.
    """

    name: str = ""
    bound: float = 4.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def mean(self) -> Pair:
        """Exact mean ``E[x]`` implied by the definition."""
        raise NotImplementedError

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        """Exact covariance ``E[(x - mean)(x - mean)^T]`` implied by the definition."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` i.i.d. points.

        Arguments:
            n: number of points, an int >= 1 (else ``ValueError``).
            generator: the only source of randomness; its device is the device of the
                result (CPU when ``None``, then torch's global generator is used).

        Returns:
            Tensor of shape (n, 2), float32.
        """
        n = _check_n(n)
        device = generator.device if generator is not None else torch.device("cpu")
        return self._sample(n, generator, device).to(torch.float32)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density ``log p(x)`` in nats (``-inf`` outside the support).

        Computed in float64 on ``x.device`` from the detached input (not differentiable).

        Arguments:
            x: points, a tensor of shape (B, 2) (else ``ValueError``).

        Returns:
            Tensor of shape (B,) in ``x.dtype`` (float64 for integer input) on ``x.device``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (B, 2), got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"expected points of shape (B, 2), got {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else F64
        xd = x.detach().to(F64)
        if len(xd) == 0:
            return torch.empty(0, dtype=dtype, device=x.device)
        rows = max(1, _BLOCK // self._block_cols())
        return torch.cat([self._log_prob(c) for c in xd.split(rows)]).to(dtype)

    def entropy(self) -> float:
        """Differential entropy ``H = -int p log p`` by grid integration, cached per instance.

        Midpoint rule with step h = 0.01 over ``[-bound, bound]^2``:
        ``H ~ -h^2 sum_ij p(c_ij) log p(c_ij)`` with ``p log p = 0`` where ``p = 0``.

        Returns:
            The entropy in nats.
        """
        cached = self.__dict__.get("_entropy")
        if cached is None:
            c = _midpoints(self.bound, ENTROPY_STEP)
            total = torch.zeros((), dtype=F64)
            rows = max(1, (1 << 18) // len(c))  # a few MB per block of the grid
            for c1 in c.split(rows):
                lp = self._grid_log_prob(c1, c)
                p = lp.exp()
                total += torch.where(p > 0, p * lp, 0.0).sum()
            cached = self.__dict__["_entropy"] = -total.item() * ENTROPY_STEP**2
        return cached

    # -- for subclasses -----------------------------------------------------------------------

    def _block_cols(self) -> int:
        """Work per point (e.g. quadrature nodes); ``log_prob`` chunks rows by it."""
        return 64

    def _sample(self, n: int, g: torch.Generator | None, device: torch.device) -> Tensor:
        raise NotImplementedError

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _grid_log_prob(self, x1: Tensor, x2: Tensor) -> Tensor:
        """``log p`` on the mesh ``x1 x x2``, shape (len(x1), len(x2)), float64 on the CPU."""
        pts = torch.stack(torch.meshgrid(x1, x2, indexing="ij"), -1).reshape(-1, 2)
        return self.log_prob(pts).reshape(len(x1), len(x2))


def _rand(n, g, device, *shape) -> Tensor:
    return torch.rand(n, *shape, generator=g, device=device, dtype=F64)


def _randn(n, g, device, *shape) -> Tensor:
    return torch.randn(n, *shape, generator=g, device=device, dtype=F64)


def _randint(k, n, g, device) -> Tensor:
    return torch.randint(0, k, (n,), generator=g, device=device)


def _isotropic_cov(var: float) -> tuple[Pair, Pair]:
    return ((var, 0.0), (0.0, var))


# ---------------------------------------------------------------------------------------------
# closed forms


class EightGaussians(Toy):
    """Eight Gaussians on a circle.

    ``x = c_k + sigma * eps``, ``k`` uniform in 0..7, ``c_k = (4/1.414)(cos k pi/4, sin k pi/4)``,
    ``sigma = 0.5/1.414`` (FFJORD divides by 1.414, not sqrt 2);
    ``log p(x) = logsumexp_k(-|x - c_k|^2 / (2 sigma^2)) - log 8 - log(2 pi sigma^2)``.

    References:
        Grathwohl et al. 2019, FFJORD (the "8gaussians" toy).
    """

    name = "8gaussians"
    bound = 5.0
    radius = 4 / 1.414
    sigma = 0.5 / 1.414

    def _centres(self, device=None) -> Tensor:
        a = torch.arange(8, dtype=F64, device=device) * (math.pi / 4)
        return self.radius * torch.stack([a.cos(), a.sin()], -1)

    @property
    def mean(self) -> Pair:
        return (0.0, 0.0)

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        return _isotropic_cov(self.radius**2 / 2 + self.sigma**2)

    def _sample(self, n, g, device):
        k = _randint(8, n, g, device)
        return self._centres(device)[k] + self.sigma * _randn(n, g, device, 2)

    def _log_prob(self, x):
        d2 = (x[:, None, :] - self._centres(x.device)).square().sum(-1)
        s2 = self.sigma**2
        return torch.logsumexp(-d2 / (2 * s2), 1) - math.log(8) - math.log(2 * math.pi * s2)


class Checkerboard(Toy):
    """Uniform on the 8 black squares of a 4 x 4 checkerboard of side 8.

    FFJORD: ``x1 = 4U - 2``, ``x2 = U' - 2 randint(0, 2) + (floor(x1) mod 2)``, point * 2.
    The support is the union of half-open squares ``[2i, 2i+2) x [2j, 2j+2)`` with
    ``i, j in {-2, ..., 1}`` and ``i + j`` even; ``log p = -log 32`` there, ``-inf`` elsewhere.
    Boundary convention: each square contains its lower and left edges, not its upper and
    right ones (as the sampler, which draws ``U`` in [0, 1)). Float32 samples are clamped
    into their square so that rounding never moves one onto an excluded edge.

    References:
        Grathwohl et al. 2019, FFJORD (the "checkerboard" toy).
    """

    name = "checkerboard"
    bound = 4.0

    @property
    def mean(self) -> Pair:
        return (0.0, 0.0)

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        # each coordinate is uniform on [-4, 4); the column means -3, -1, 1, 3 pair with the
        # row means -1, 1, -1, 1: E[x1 x2] = (3 - 1 - 1 + 3) / 4 = 1
        return ((16 / 3, 1.0), (1.0, 16 / 3))

    def _sample(self, n, g, device):
        x1 = 4 * _rand(n, g, device) - 2
        x2 = _rand(n, g, device) - 2 * _randint(2, n, g, device) + torch.floor(x1) % 2
        x = 2 * torch.stack([x1, x2], -1)
        upper = (2 * torch.floor(x / 2) + 2).float()
        return torch.minimum(x.float(), torch.nextafter(upper, upper.new_tensor(-math.inf)))

    def _log_prob(self, x):
        ij = torch.floor(x / 2)
        inside = ((ij >= -2) & (ij <= 1)).all(1) & (ij.sum(1) % 2 == 0)
        return torch.where(inside, -math.log(32), -math.inf)


class _RadialMixture(Toy):
    """Equal mixture of rings of radii ``r_k`` with a uniform angle, plus N(0, sigma^2 I).

    Integrating the angle out gives, with ``rho = |x|``,
    ``p(x) = (1/K) sum_k exp(-(rho^2 + r_k^2) / (2 sigma^2)) I0(rho r_k / sigma^2)
    / (2 pi sigma^2)``,
    evaluated stably as ``-(rho - r_k)^2 / (2 sigma^2) + log i0e(rho r_k / sigma^2)`` with
    the exponentially scaled Bessel function ``i0e(z) = exp(-z) I0(z)``.

    References:
        Grathwohl et al. 2019, FFJORD (the "rings" and "circles" toys).
    """

    radii: tuple[float, ...] = ()
    sigma: float = 0.1

    @property
    def mean(self) -> Pair:
        return (0.0, 0.0)

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        return _isotropic_cov(
            sum(r * r for r in self.radii) / (2 * len(self.radii)) + self.sigma**2
        )

    def _sample(self, n, g, device):
        r = torch.tensor(self.radii, dtype=F64, device=device)[
            _randint(len(self.radii), n, g, device)
        ]
        a = 2 * math.pi * _rand(n, g, device)
        return r[:, None] * torch.stack([a.cos(), a.sin()], -1) + self.sigma * _randn(
            n, g, device, 2
        )

    def _log_prob(self, x):
        rho = x.norm(dim=1, keepdim=True)
        r = torch.tensor(self.radii, dtype=F64, device=x.device)
        s2 = self.sigma**2
        t = -(rho - r).square() / (2 * s2) + torch.special.i0e(rho * r / s2).log()
        return torch.logsumexp(t, 1) - math.log(len(self.radii)) - math.log(2 * math.pi * s2)


class Rings(_RadialMixture):
    """Four rings, radii 3, 2.25, 1.5, 0.75, equal weights, sigma 0.08 (see ``_RadialMixture``).

    References:
        Grathwohl et al. 2019, FFJORD (the "rings" toy).
    """

    name = "rings"
    bound = 4.0
    radii = (3.0, 2.25, 1.5, 0.75)
    sigma = 0.08


class Circles(_RadialMixture):
    """Two circles, radii 3 and 1.5, equal weights, sigma 0.24 (see ``_RadialMixture``).

    References:
        Grathwohl et al. 2019, FFJORD (the "circles" toy).
    """

    name = "circles"
    bound = 4.5
    radii = (3.0, 1.5)
    sigma = 0.24


# ---------------------------------------------------------------------------------------------
# curves with noise: quadrature over the curve parameter


def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


class _CurveToy(Toy):
    """Equal mixture of arms ``m_a(t)``, ``t ~ q(t)`` on ``[t0, t1]``, plus separable noise.

    ``p(x) = sum_a (1/A) int q(t) k(x1 - m_a1(t)) k(x2 - m_a2(t)) dt``, with the 1D noise
    kernel ``k``, is computed as ``sum_j w_j k(x1 - m_j1) k(x2 - m_j2)`` over composite
    Gauss-Legendre nodes: panels of equal arc length ``panel`` (final coordinates), ``order``
    nodes each, so the rule resolves the noise scale uniformly along the curve.
    """

    t_range: Pair = (0.0, 1.0)
    sigma: float = 0.1
    panel: float = 0.1
    order: int = 8

    def _arms(self, t: Tensor) -> list[Tensor]:
        """Node centres ``m_a(t)`` of each arm, each of shape (len(t), 2)."""
        raise NotImplementedError

    def _t_density(self, t: Tensor) -> Tensor:
        return torch.full_like(t, 1 / (self.t_range[1] - self.t_range[0]))

    def _nodes(self, device) -> tuple[Tensor, Tensor]:
        """Quadrature nodes (N, 2) and weights (N,) (summing to 1) on ``device``."""
        cache = self.__dict__.setdefault("_node_cache", {})
        key = (str(device), self.panel, self.order)
        if key not in cache:
            t0, t1 = self.t_range
            fine = torch.linspace(t0, t1, 20001, dtype=F64)
            gx, gw = (torch.from_numpy(a) for a in _gauss_legendre(self.order))
            nodes, weights = [], []
            for arm in range(len(self._arms(fine[:2]))):
                c = self._arms(fine)[arm]
                s = torch.cat([c.new_zeros(1), (c[1:] - c[:-1]).norm(dim=1).cumsum(0)])
                panels = max(1, math.ceil(s[-1].item() / self.panel))
                edges = torch.from_numpy(
                    np.interp(np.linspace(0, s[-1].item(), panels + 1), s.numpy(), fine.numpy())
                )
                a, b = edges[:-1, None], edges[1:, None]
                t = ((a + b) / 2 + (b - a) / 2 * gx).reshape(-1)
                w = ((b - a) / 2 * gw).reshape(-1)
                nodes.append(self._arms(t)[arm])
                weights.append(w * self._t_density(t))
            n_arms = len(nodes)
            cache[key] = (torch.cat(nodes).to(device), (torch.cat(weights) / n_arms).to(device))
        return cache[key]

    def _block_cols(self) -> int:
        return len(self._nodes("cpu")[1])

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean and covariance: Gauss-Legendre (400 nodes per arm) on the entire-function
        moments of the curve, exact to rounding, plus the noise covariance."""
        gx, gw = _gauss_legendre(400)
        t0, t1 = self.t_range
        t = torch.from_numpy((t0 + t1) / 2 + (t1 - t0) / 2 * gx)
        w = (t1 - t0) / 2 * torch.from_numpy(gw) * self._t_density(t)
        arms = self._exact_arms(t)
        mean = sum((w[:, None] * m).sum(0) for m in arms) / len(arms)
        second = sum(torch.einsum("n,ni,nj->ij", w, m, m) for m in arms) / len(arms)
        cov = second - torch.outer(mean, mean) + torch.eye(2, dtype=F64) * self._noise_var()
        return mean.numpy(), cov.numpy()

    def _exact_arms(self, t: Tensor) -> list[Tensor]:
        """The arms as random points before the noise (``_arms`` for pure Gaussian noise)."""
        return self._arms(t)

    def _noise_var(self) -> float:
        return self.sigma**2

    @property
    def mean(self) -> Pair:
        m = self._moments()[0]
        return (float(m[0]), float(m[1]))

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        c = self._moments()[1]
        return ((float(c[0, 0]), float(c[0, 1])), (float(c[1, 0]), float(c[1, 1])))


class _GaussianCurve(_CurveToy):
    """A curve toy with isotropic Gaussian noise N(0, sigma^2 I).

    ``log p(x) = logsumexp_j(log w_j - |x - m_j|^2 / (2 sigma^2)) - log(2 pi sigma^2)``, the
    exponents formed by one matrix product (``|x|^2 - 2 x.m_j + |m_j|^2``).
    """

    def _log_prob(self, x):
        m, w = self._nodes(x.device)
        s2 = self.sigma**2
        e = (x @ m.T) / s2 + (w.log() - m.square().sum(1) / (2 * s2))
        return torch.logsumexp(e, 1) - x.square().sum(1) / (2 * s2) - math.log(2 * math.pi * s2)

    def _kernel(self, y: Tensor) -> Tensor:
        return torch.exp(-y.square() / (2 * self.sigma**2)) / (math.sqrt(2 * math.pi) * self.sigma)

    def _grid_log_prob(self, x1, x2):
        # separable: p = (K1 diag(w)) K2^T with K_i[., j] = k(x_i - m_ji); tiny p underflows
        # to 0, which entropy() treats as p log p = 0
        m, w = self._nodes("cpu")
        k1 = self._kernel(x1[:, None] - m[:, 0])
        k2 = self._kernel(x2[:, None] - m[:, 1])
        return ((k1 * w) @ k2.T).log()


class Moons(_GaussianCurve):
    """Two interleaved half circles (sklearn ``make_moons(noise=0.1) * 2 + (-1, -0.2)``).

    Arms ``(2 cos t - 1, 2 sin t - 0.2)`` and ``(1 - 2 cos t, 0.8 - 2 sin t)``, each with
    probability 1/2, ``t ~ U[0, pi]``, plus N(0, 0.2^2 I). Mean (0, 0.3); covariance
    ``[[3.04, 0.5 - 4/pi], [0.5 - 4/pi, 2.29 - 4/pi]]``.

    References:
        Grathwohl et al. 2019, FFJORD (the "moons" toy).
    """

    name = "moons"
    bound = 4.0
    t_range = (0.0, math.pi)
    sigma = 0.2
    panel = 0.4
    order = 8

    def _arms(self, t):
        c, s = 2 * t.cos(), 2 * t.sin()
        return [torch.stack([c - 1, s - 0.2], -1), torch.stack([1 - c, 0.8 - s], -1)]

    def _sample(self, n, g, device):
        t = math.pi * _rand(n, g, device)
        arm = _randint(2, n, g, device).bool()[:, None]
        a, b = self._arms(t)
        return torch.where(arm, b, a) + self.sigma * _randn(n, g, device, 2)


class SwissRoll(_GaussianCurve):
    """The swiss roll (sklearn ``make_swiss_roll(noise=1)``, coordinates 0 and 2, / 5).

    ``t ~ U[1.5 pi, 4.5 pi]``, ``x = (t cos t, t sin t) / 5 + N(0, 0.2^2 I)``.

    References:
        Grathwohl et al. 2019, FFJORD (the "swissroll" toy).
    """

    name = "swissroll"
    bound = 4.0
    t_range = (1.5 * math.pi, 4.5 * math.pi)
    sigma = 0.2
    panel = 0.4
    order = 8

    def _arms(self, t):
        return [torch.stack([t * t.cos(), t * t.sin()], -1) / 5]

    def _sample(self, n, g, device):
        t0, t1 = self.t_range
        t = t0 + (t1 - t0) * _rand(n, g, device)
        return self._arms(t)[0] + self.sigma * _randn(n, g, device, 2)


class TwoSpirals(_CurveToy):
    """Two interleaved spirals.

    ``n = 3 pi sqrt(U)`` (density ``2n / (3 pi)^2`` on [0, 3 pi]),
    ``d = (-n cos n + U1/2, n sin n + U2/2)``, ``x = +d/3`` or ``-d/3`` with probability 1/2,
    plus N(0, 0.1^2 I). Per coordinate the jitter ``U/6`` convolved with the noise is the
    kernel ``k(y) = 6 [Phi((y + a)/sigma) - Phi((y - a)/sigma)]``, ``a = 1/12``, about the
    jitter's centre, so arm ``+-`` has node centres ``+-(c(n)/3 + (1/12, 1/12))``.
    ``k(y) = 3 [erfc((|y| - a)/(sigma sqrt 2)) - erfc((|y| + a)/(sigma sqrt 2))]`` loses no
    precision; rows whose density underflows (far from the spirals) are recomputed in log
    space with ``log_ndtr``.

    References:
        Grathwohl et al. 2019, FFJORD (the "2spirals" toy).
    """

    name = "2spirals"
    bound = 4.0
    t_range = (0.0, 3 * math.pi)
    sigma = 0.1
    half = 1 / 12
    panel = 0.2
    order = 8

    def _t_density(self, t):
        return 2 * t / (3 * math.pi) ** 2

    def _arms(self, t):
        m = torch.stack([-t * t.cos(), t * t.sin()], -1) / 3 + self.half
        return [m, -m]

    def _exact_arms(self, t):
        # the uniform jitter is part of the noise here (see _noise_var and the mean shift)
        return self._arms(t)

    def _noise_var(self) -> float:
        return self.sigma**2 + (2 * self.half) ** 2 / 12

    def _sample(self, n, g, device):
        t = 3 * math.pi * _rand(n, g, device).sqrt()
        d = torch.stack([-t * t.cos(), t * t.sin()], -1) + _rand(n, g, device, 2) / 2
        sign = 1 - 2 * _randint(2, n, g, device).to(F64)[:, None]
        return sign * d / 3 + self.sigma * _randn(n, g, device, 2)

    def _kernel(self, y: Tensor) -> Tensor:
        u, c = y.abs(), 1 / (self.sigma * math.sqrt(2))
        return 3 * (
            torch.special.erfc((u - self.half) * c) - torch.special.erfc((u + self.half) * c)
        )

    def _log_kernel(self, y: Tensor) -> Tensor:
        u = y.abs()
        hi = torch.special.log_ndtr((self.half - u) / self.sigma)
        lo = torch.special.log_ndtr((-self.half - u) / self.sigma)
        return math.log(6) + hi + torch.log1p(-torch.exp(lo - hi))

    def _log_prob(self, x):
        m, w = self._nodes(x.device)
        p = (self._kernel(x[:, :1] - m[:, 0]) * self._kernel(x[:, 1:] - m[:, 1])) @ w
        out = p.log()
        far = ~(p > 1e-250)
        if far.any():
            xf = x[far]
            e = (
                w.log()
                + self._log_kernel(xf[:, :1] - m[:, 0])
                + self._log_kernel(xf[:, 1:] - m[:, 1])
            )
            out[far] = torch.logsumexp(e, 1)
        return out

    def _grid_log_prob(self, x1, x2):
        m, w = self._nodes("cpu")
        k1 = self._kernel(x1[:, None] - m[:, 0])
        k2 = self._kernel(x2[:, None] - m[:, 1])
        return ((k1 * w) @ k2.T).log()


# ---------------------------------------------------------------------------------------------
# pinwheel: a sum over preimages


def _newton_increasing(fun, lo: Tensor, hi: Tensor, x: Tensor, iters: int = 100) -> Tensor:
    """Root of an increasing function in ``[lo, hi]`` (elementwise, vectorised).

    Newton steps, replaced by bisection whenever they leave the current bracket; the bracket
    shrinks every step. ``fun(x, idx)`` returns ``(g, dg)`` for the active elements ``idx``.
    Converged elements leave the active set.
    """
    x, lo, hi = x.clone(), lo.clone(), hi.clone()
    idx = torch.arange(len(x), device=x.device)
    for _ in range(iters):
        if len(idx) == 0:
            break
        xi, li, hi_i = x[idx], lo[idx], hi[idx]
        g, dg = fun(xi, idx)
        left = g <= 0
        li = torch.where(left, xi, li)
        hi_i = torch.where(left, hi_i, xi)
        new = xi - g / dg
        bad = ~((new > li) & (new < hi_i))  # also catches dg <= 0 and nan
        new = torch.where(bad, (li + hi_i) / 2, new)
        done = ((new - xi).abs() <= 1e-13 * (1 + xi.abs())) | (hi_i - li <= 1e-15 * (1 + xi.abs()))
        x[idx], lo[idx], hi[idx] = new, li, hi_i
        idx = idx[~done]
    return x


class Pinwheel(Toy):
    """Five pinwheel arms.

    ``f ~ N((1, 0), diag(0.3^2, 0.1^2))``, ``k`` uniform in 0..4,
    ``a = 2 pi k / 5 + 0.25 exp(f0)``, ``x = 2 f R(a)`` (row vector times
    ``R(a) = [[cos a, -sin a], [sin a, cos a]]``, FFJORD's ``einsum("ti,tij->tj")``), i.e. ``f``
    scaled by 2 and rotated clockwise by ``a``.

    Density: in polar coordinates ``f = r (cos b, sin b)`` the map keeps the radius
    (``|x| = 2r``) and sends the angle to ``phi = b - 2 pi k/5 - 0.25 exp(r cos b)``, so the
    preimages of ``x = (2r cos phi, 2r sin phi)`` over all arms are the roots ``b`` of
    ``h(b) = b - 0.25 exp(r cos b) = phi (mod 2 pi / 5)``. ``|det J| = 4 |h'(b)|`` with
    ``h'(b) = 1 + 0.25 r sin b exp(r cos b)``, so
    ``p(x) = (1/5) sum_roots N(f(b)) / (4 |h'(b)|)``.
    ``h'`` has one minimum on the circle; when it is negative (``r > ~1.7``) the map folds
    and ``h`` has one decreasing piece between the two zeros of ``h'``. On each monotone
    piece every level ``phi + 2 pi m / 5`` in its range has exactly one root, found by a
    safeguarded Newton solve. For ``r > 5.5`` only ``|b| <= asin(1.17/r)`` is searched (roots
    outside it weigh less than ``e^-60`` of the largest); for ``|x| > 20`` (``log p < -440``)
    the sum is replaced by its continuum limit ``(1/(8 pi)) int N(f(b)) db`` (an
    approximation there, error under ~0.3 nats, shrinking like ``exp(-|x|/4)``).

    References:
        Grathwohl et al. 2019, FFJORD (the "pinwheel" toy).
    """

    name = "pinwheel"
    bound = 5.0
    arms = 5
    rate = 0.25
    radial_std = 0.3
    tangential_std = 0.1

    @property
    def mean(self) -> Pair:
        return (0.0, 0.0)

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        # 5-fold symmetry makes it isotropic; E|x|^2 = 4 E|f|^2 = 4 (1 + 0.3^2 + 0.1^2)
        return _isotropic_cov(2 * (1 + self.radial_std**2 + self.tangential_std**2))

    def _sample(self, n, g, device):
        f = _randn(n, g, device, 2) * torch.tensor(
            [self.radial_std, self.tangential_std], dtype=F64, device=device
        )
        f[:, 0] += 1
        k = _randint(self.arms, n, g, device).to(F64)
        a = 2 * math.pi * k / self.arms + self.rate * f[:, 0].exp()
        c, s = a.cos(), a.sin()
        return 2 * torch.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], -1)

    def _block_cols(self) -> int:
        return 8

    def _log_normal(self, r: Tensor, b: Tensor) -> Tensor:
        f0, f1 = r * b.cos(), r * b.sin()
        sr, st = self.radial_std, self.tangential_std
        return (
            -(f0 - 1).square() / (2 * sr**2)
            - f1.square() / (2 * st**2)
            - _LOG2PI
            - math.log(sr * st)
        )

    def _log_prob(self, x):
        r = x.norm(dim=1) / 2
        phi = torch.atan2(x[:, 1], x[:, 0])
        out = torch.empty_like(r)
        far = r > 10
        if far.any():
            out[far] = self._continuum(r[far])
        near = ~far
        if near.any():
            out[near] = self._root_sum(r[near], phi[near])
        return out

    def _continuum(self, r: Tensor) -> Tensor:
        gx, gw = (torch.from_numpy(a).to(r.device) for a in _gauss_legendre(64))
        w = torch.asin(torch.clamp(1.4 / r, max=1.0))[:, None]
        b = w * gx
        e = self._log_normal(r[:, None], b) + (w * gw).log()
        return torch.logsumexp(e, 1) - math.log(8 * math.pi)

    def _root_sum(self, r: Tensor, phi: Tensor) -> Tensor:
        c0 = self.rate
        # minimum of h' on the circle: cos b* = 2r / (1 + sqrt(1 + 4 r^2)), b* < 0
        bmin = -torch.arccos(2 * r / (1 + torch.sqrt(1 + 4 * r * r)))
        bmax = -bmin

        def dh(b, rr):
            return 1 + c0 * rr * b.sin() * torch.exp(rr * b.cos())

        def d2h(b, rr):
            return c0 * rr * torch.exp(rr * b.cos()) * (b.cos() - rr * b.sin().square())

        fold = dh(bmin, r) < 0
        bl, br = bmin.clone(), bmin.clone()
        if fold.any():
            rf, lo, mid = r[fold], bmax[fold] - 2 * math.pi, bmin[fold]
            # h' decreases on [bmax - 2 pi, bmin] and increases on [bmin, bmax]
            bl[fold] = _newton_increasing(
                lambda b, i: (-dh(b, rf[i]), -d2h(b, rf[i])), lo, mid, (lo + mid) / 2
            )
            br[fold] = _newton_increasing(
                lambda b, i: (dh(b, rf[i]), d2h(b, rf[i])), mid, bmax[fold], (mid + bmax[fold]) / 2
            )
        # monotone pieces: increasing [br, bl + 2 pi], decreasing [bl, br] (empty if no fold);
        # far out only the window |b| <= w matters
        w = torch.where(r > 5.5, torch.asin(torch.clamp(1.17 / r, max=1.0)), math.inf)
        pieces = [
            (br.maximum(-w), (bl + 2 * math.pi).minimum(w), 1.0),
            (bl.maximum(-w).minimum(br.maximum(-w)), br.maximum(-w), -1.0),
        ]
        delta = 2 * math.pi / self.arms
        pts, a_s, b_s, lev, sgn = [], [], [], [], []
        ids = torch.arange(len(r), device=r.device)
        for a, b, s in pieces:
            ha = a - c0 * torch.exp(r * a.cos())
            hb = b - c0 * torch.exp(r * b.cos())
            if s < 0:
                ha, hb = hb, ha
            y0 = (ha - phi) / delta
            if s > 0:  # no fold: h(b) = h(a) + 2 pi exactly, so exactly 5 roots
                y1 = torch.where(fold | (r > 5.5), (hb - phi) / delta, y0 + self.arms)
            else:
                y1 = (hb - phi) / delta
            m0 = torch.ceil(y0)
            count = (torch.ceil(y1) - m0).clamp(min=0).long()
            pid = ids.repeat_interleave(count)
            first = torch.cumsum(count, 0) - count
            m = m0[pid] + (torch.arange(len(pid), device=r.device) - first[pid])
            pts.append(pid)
            a_s.append(a[pid])
            b_s.append(b[pid])
            lev.append(phi[pid] + delta * m)
            sgn.append(torch.full_like(m, s))
        pid, a, b, lev, sgn = (torch.cat(v) for v in (pts, a_s, b_s, lev, sgn))
        rr = r[pid]
        ha = a - c0 * torch.exp(rr * a.cos())
        hb = b - c0 * torch.exp(rr * b.cos())
        frac = ((lev - ha) / (hb - ha)).nan_to_num(0.5).clamp(0, 1)

        def g(beta, i):
            e = c0 * torch.exp(rr[i] * beta.cos())
            # oriented along the piece: increasing in beta in both cases
            return sgn[i] * (beta - e - lev[i]), sgn[i] * (1 + rr[i] * beta.sin() * e)

        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        beta = _newton_increasing(g, lo, hi, a + frac * (b - a))
        jac = (4 * dh(beta, rr)).abs()
        terms = self._log_normal(rr, beta) - jac.log() - math.log(self.arms)
        top = torch.full_like(r, -math.inf).scatter_reduce(0, pid, terms, "amax")
        top = torch.where(torch.isfinite(top), top, 0.0)
        acc = torch.zeros_like(r).index_add_(0, pid, torch.exp(terms - top[pid]))
        return acc.log() + top


# ---------------------------------------------------------------------------------------------

TOYS: dict[str, type[Toy]] = {
    cls.name: cls
    for cls in (
        EightGaussians,
        Moons,
        Checkerboard,
        TwoSpirals,
        Pinwheel,
        Rings,
        Circles,
        SwissRoll,
    )
}


def get_toy(name: str) -> Toy:
    """The toy data set called ``name``.

    Arguments:
        name: one of the keys of ``TOYS`` ("8gaussians", "moons", ...).

    Returns:
        A new instance of that toy.
    """
    if name not in TOYS:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(TOYS)}")
    return TOYS[name]()
