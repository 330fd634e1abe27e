"""The curve toys: moons, swissroll and 2spirals, noise around a random point on a curve.

The density integrates the noise kernel over the curve parameter by composite Gauss-Legendre
quadrature (panels of equal arc length); see ``_CurveToy``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from genlab.checks import check_positive
from genlab.data.base import F64, Pair, Toy, _gauss_legendre, _rand, _randint, _randn

__all__ = ["Moons", "SwissRoll", "TwoSpirals"]


class _CurveToy(Toy):
    """Equal mixture of arms ``m_a(t)``, ``t ~ q(t)`` on ``[t0, t1]``, plus separable noise.

    ``p(x) = sum_a (1/A) int q(t) k(x1 - m_a1(t)) k(x2 - m_a2(t)) dt``, with the 1D noise
    kernel ``k``, is computed as ``sum_j w_j k(x1 - m_j1) k(x2 - m_j2)`` over composite
    Gauss-Legendre nodes: panels of equal arc length ``panel`` (final coordinates), ``order``
    nodes each, so the rule resolves the noise scale uniformly along the curve. With more
    than one arm the arms are the classes: ``p(x | a)`` is the same sum over arm ``a``'s
    nodes alone.
    """

    t_range: Pair = (0.0, 1.0)
    sigma: float = 0.1
    order: int = 8

    def _set_constants(self, **given) -> None:
        super()._set_constants(**given)
        # quadrature panels two noise std long along the curve: a 1e-9 rule on the data
        self.panel = 2 * self.sigma

    def _arms(self, t: Tensor) -> list[Tensor]:
        """Node centres ``m_a(t)`` of each arm, each of shape (len(t), 2)."""
        raise NotImplementedError

    def _t_density(self, t: Tensor) -> Tensor:
        return torch.full_like(t, 1 / (self.t_range[1] - self.t_range[0]))

    @property
    def classes(self) -> int:  # the arms, when there are several
        n = len(self._arms(torch.zeros(1, dtype=F64)))
        return n if n > 1 else 0

    def _nodes(self, device, arm: int | None = None) -> tuple[Tensor, Tensor]:
        """Quadrature nodes (N, 2) and weights (N,) (summing to 1) on ``device``: of the whole
        mixture, or of one ``arm`` alone."""
        m, w, count = self._all_nodes(device)
        if arm is None:
            return m, w
        start = sum(count[:arm])
        return m[start : start + count[arm]], w[start : start + count[arm]] * len(count)

    def _all_nodes(self, device) -> tuple[Tensor, Tensor, list[int]]:
        """The mixture's nodes and weights, and the number of nodes of each arm, in order."""
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
            cache[key] = (
                torch.cat(nodes).to(device),
                (torch.cat(weights) / n_arms).to(device),
                [len(w) for w in weights],
            )
        return cache[key]

    def _class_log_prob(self, x, k):
        return self._log_prob_on(x, *self._nodes(x.device, k))

    def _log_prob(self, x):
        return self._log_prob_on(x, *self._nodes(x.device))

    def _log_prob_on(self, x: Tensor, m: Tensor, w: Tensor) -> Tensor:
        """``log sum_j w_j k(x1 - m_j1) k(x2 - m_j2)`` over the nodes ``m`` (N, 2), weights
        ``w`` (N,)."""
        raise NotImplementedError

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

    def _log_prob_on(self, x, m, w):
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
    """Two interleaved half circles (sklearn ``make_moons``, scaled and shifted).

    sklearn's unit moons, ``(cos t, sin t)`` and ``(1 - cos t, 0.5 - sin t)`` with
    ``t ~ U[0, pi]``, each with probability 1/2, times ``scale``, plus ``offset``, plus
    N(0, sigma^2 I). FFJORD's (the defaults): ``make_moons(noise=0.1) * 2 + (-1, -0.2)``, so
    arms ``(2 cos t - 1, 2 sin t - 0.2)`` and ``(1 - 2 cos t, 0.8 - 2 sin t)`` and sigma 0.2
    (sklearn's noise 0.1, scaled by 2); mean (0, 0.3), covariance
    ``[[3.04, 0.5 - 4/pi], [0.5 - 4/pi, 2.29 - 4/pi]]``, entropy 2.3939 nats,
    constant-Jacobian floor 0.0358 nats. Classes: the half circle, the upper first.

    Arguments:
        scale: the radius of each half circle (default 2).
        offset: the shift of the scaled moons (default (-1, -0.2)).
        sigma: the noise std in final coordinates (default 0.2: sklearn's noise times scale).

    References:
        Grathwohl et al. 2019, FFJORD (the "moons" toy).
    """

    name = "moons"
    bound = 4.0
    floor_at_defaults = 0.0358
    defaults = {"scale": 2.0, "offset": (-1.0, -0.2), "sigma": 0.2}
    t_range = (0.0, math.pi)
    order = 8

    def __init__(self, scale: float = 2.0, offset: Pair = (-1.0, -0.2), sigma: float = 0.2) -> None:
        self._set_constants(scale=scale, offset=offset, sigma=sigma)

    def _check_constants(self) -> None:
        if len(self.offset) != 2:
            raise ValueError(f"moons offset must be a pair, got {self.offset!r}")
        for key in ("scale", "sigma"):
            check_positive(f"moons {key}", getattr(self, key))

    def extent(self) -> float:
        dx, dy = (abs(o) for o in self.offset)
        return max(2 * self.scale + dx, 1.5 * self.scale + dy) + 5.3 * self.sigma

    def _arms(self, t):
        c, s = self.scale * t.cos(), self.scale * t.sin()
        ox, oy = self.offset
        return [
            torch.stack([c + ox, s + oy], -1),
            torch.stack([self.scale - c + ox, 0.5 * self.scale - s + oy], -1),
        ]

    def _sample_labelled(self, n, g, device):
        t = math.pi * _rand(n, g, device)
        arm = _randint(2, n, g, device)
        a, b = self._arms(t)
        return torch.where(arm.bool()[:, None], b, a) + self.sigma * _randn(n, g, device, 2), arm


class SwissRoll(_GaussianCurve):
    """The swiss roll (sklearn ``make_swiss_roll``, coordinates 0 and 2, times ``scale``).

    ``t ~ U[1.5 pi, 4.5 pi]``, ``x = scale (t cos t, t sin t) + N(0, sigma^2 I)``. FFJORD's
    (the defaults): ``make_swiss_roll(noise=1)`` divided by 5, so scale 0.2 and sigma 0.2;
    entropy 2.6696 nats, constant-Jacobian floor 0.0278 nats.

    Arguments:
        scale: the factor on sklearn's roll (default 0.2).
        sigma: the noise std in final coordinates (default 0.2).

    References:
        Grathwohl et al. 2019, FFJORD (the "swissroll" toy).
    """

    name = "swissroll"
    bound = 4.0
    floor_at_defaults = 0.0278
    defaults = {"scale": 0.2, "sigma": 0.2}
    t_range = (1.5 * math.pi, 4.5 * math.pi)
    order = 8

    def __init__(self, scale: float = 0.2, sigma: float = 0.2) -> None:
        self._set_constants(scale=scale, sigma=sigma)

    def extent(self) -> float:
        return 4.5 * math.pi * self.scale + 5.3 * self.sigma

    def _arms(self, t):
        return [self.scale * torch.stack([t * t.cos(), t * t.sin()], -1)]

    def _sample(self, n, g, device):
        t0, t1 = self.t_range
        t = t0 + (t1 - t0) * _rand(n, g, device)
        return self._arms(t)[0] + self.sigma * _randn(n, g, device, 2)


class TwoSpirals(_CurveToy):
    """Two interleaved spirals.

    ``n = T sqrt(U)`` (density ``2n / T^2`` on [0, T], ``T = 2 pi turns``),
    ``d = (-n cos n + U1/2, n sin n + U2/2)``, ``x = +scale d`` or ``-scale d`` with
    probability 1/2, plus N(0, sigma^2 I) (``U, U1, U2`` independent uniforms on [0, 1)).
    FFJORD's (the defaults): 540 degrees (1.5 turns), scale 1/3, sigma 0.1; entropy 2.6455
    nats, constant-Jacobian floor 0.0455 nats. Classes: the spiral, ``+d`` first.

    Density: per coordinate the jitter ``scale U/2`` convolved with the noise is the kernel
    ``k(y) = (1 / 2a) [Phi((y + a)/sigma) - Phi((y - a)/sigma)]``, ``a = scale / 4``, about
    the jitter's centre, so arm ``+-`` has node centres ``+-(scale c(n) + (a, a))``.
    ``k(y) = (1 / 4a) [erfc((|y| - a)/(sigma sqrt 2)) - erfc((|y| + a)/(sigma sqrt 2))]``
    loses no precision; rows whose density underflows (far from the spirals) are recomputed in
    log space with ``log_ndtr``.

    Arguments:
        scale: the factor on the spirals (default 1/3).
        turns: the turns of each spiral (default 1.5).
        sigma: the Gaussian noise std in final coordinates (default 0.1).

    References:
        Grathwohl et al. 2019, FFJORD (the "2spirals" toy).
    """

    name = "2spirals"
    bound = 4.0
    floor_at_defaults = 0.0455
    defaults = {"scale": 1 / 3, "turns": 1.5, "sigma": 0.1}
    order = 8

    def __init__(self, scale: float = 1 / 3, turns: float = 1.5, sigma: float = 0.1) -> None:
        self._set_constants(scale=scale, turns=turns, sigma=sigma)
        self.t_range = (0.0, 2 * math.pi * self.turns)
        self.half = self.scale / 4  # the half-width a of the jitter, scale * U / 2

    def extent(self) -> float:
        return self.scale * (2 * math.pi * self.turns + 0.5) + 5.3 * self.sigma

    def _t_density(self, t):
        return 2 * t / self.t_range[1] ** 2

    def _arms(self, t):
        m = self.scale * torch.stack([-t * t.cos(), t * t.sin()], -1) + self.half
        return [m, -m]

    def _exact_arms(self, t):
        # the uniform jitter is part of the noise here (see _noise_var and the mean shift)
        return self._arms(t)

    def _noise_var(self) -> float:
        return self.sigma**2 + (2 * self.half) ** 2 / 12

    def _sample_labelled(self, n, g, device):
        t = self.t_range[1] * _rand(n, g, device).sqrt()
        d = torch.stack([-t * t.cos(), t * t.sin()], -1) + _rand(n, g, device, 2) / 2
        arm = _randint(2, n, g, device)
        sign = 1 - 2 * arm.to(F64)[:, None]
        return sign * self.scale * d + self.sigma * _randn(n, g, device, 2), arm

    def _kernel(self, y: Tensor) -> Tensor:
        u, c = y.abs(), 1 / (self.sigma * math.sqrt(2))
        return (
            torch.special.erfc((u - self.half) * c) - torch.special.erfc((u + self.half) * c)
        ) / (4 * self.half)

    def _log_kernel(self, y: Tensor) -> Tensor:
        u = y.abs()
        hi = torch.special.log_ndtr((self.half - u) / self.sigma)
        lo = torch.special.log_ndtr((-self.half - u) / self.sigma)
        return -math.log(2 * self.half) + hi + torch.log1p(-torch.exp(lo - hi))

    def _log_prob_on(self, x, m, w):
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
