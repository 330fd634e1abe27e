"""The pinwheel toy: its density is a sum over the preimages of a folding map.

The preimages are the roots of a 1D equation in the polar angle, found by the safeguarded
Newton solve ``_newton_increasing``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.data.base import (
    _LOG2PI,
    F64,
    Pair,
    Toy,
    _gauss_legendre,
    _isotropic_cov,
    _randint,
    _randn,
)

__all__ = ["Pinwheel"]


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
