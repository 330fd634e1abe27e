"""The pinwheel toy: its density is a sum over the preimages of a folding map.

The preimages are the roots of a 1D equation in the polar angle, found by the safeguarded
Newton solve ``_newton_increasing``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.checks import check_int
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

# Beyond this feature radius r (|x| = scale r) only preimage angles |b| <= asin(window / r) are
# searched, window = _WINDOW_SIN at the default stds (see Pinwheel._window).
_WINDOW_RADIUS = 5.5
_WINDOW_SIN = 1.17
_FAR_RADIUS = 10.0  # beyond it the continuum limit replaces the sum over preimages


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
    """Pinwheel arms: five by default, FFJORD's.

    ``f ~ N((1, 0), diag(sr^2, st^2))`` (radial std ``sr`` 0.3, tangential std ``st`` 0.1, no
    other noise), ``k`` uniform in ``0..K-1`` (``K = arms``, equal weights),
    ``a = 2 pi k / K + rate exp(f0)``, ``x = s f R(a)`` (row vector times
    ``R(a) = [[cos a, -sin a], [sin a, cos a]]``, FFJORD's ``einsum("ti,tij->tj")``), i.e. ``f``
    scaled by ``s`` (``scale``, 2) and rotated clockwise by ``a``. The formulas below are
    written at the defaults (K = 5, rate 0.25, s = 2); the code follows the constants.

    Density: in polar coordinates ``f = r (cos b, sin b)`` the map keeps the radius
    (``|x| = 2r``) and sends the angle to ``phi = b - 2 pi k/5 - 0.25 exp(r cos b)``, so the
    preimages of ``x = (2r cos phi, 2r sin phi)`` over all arms are the roots ``b`` of
    ``h(b) = b - 0.25 exp(r cos b) = phi (mod 2 pi / 5)``. ``|det J| = 4 |h'(b)|`` (``s^2``)
    with ``h'(b) = 1 + 0.25 r sin b exp(r cos b)``, so
    ``p(x) = (1/5) sum_roots N(f(b)) / (4 |h'(b)|)``.
    ``h'`` has one minimum on the circle; when it is negative (``r > ~1.7``) the map folds
    and ``h`` has one decreasing piece between the two zeros of ``h'``. On each monotone
    piece every level ``phi + 2 pi m / 5`` in its range has exactly one root, found by a
    safeguarded Newton solve. For ``r > 5.5`` only ``|r sin b| <= w`` is searched: a root with
    ``|r sin b| = u`` weighs at most ``exp(-u^2 (1/(2 st^2) - 1/(2 sr^2)))`` of the root-free
    ``b = 0`` term, and ``w`` makes that ``e^-61`` (``w = 1.17`` at the defaults; no window
    when ``st >= sr``). For ``r > 10`` (``|x| > 20`` at the defaults, ``log p < -440``) the sum
    is replaced by its continuum limit ``(1/(2 pi s^2)) int N(f(b)) db`` (an approximation
    there, error under ~0.3 nats at the defaults, shrinking like ``exp(-|x|/4)``).
    At the defaults: entropy 2.3178 nats; constant-Jacobian floor 0.0008 nats.

    Classes: the arm ``k``. A root of level ``phi + 2 pi m / 5`` is a preimage on arm
    ``k = m mod 5``, so ``p(x | k)`` is the same sum over arm ``k``'s roots alone, times 5
    (beyond ``|x| = 20``, where ``log p < -440``, the continuum limit times 5 for every arm).

    Arguments:
        arms: the number of arms K (>= 3; default 5).
        rate: how fast an arm turns with the radial feature (default 0.25).
        radial_std, tangential_std: the features' stds (defaults 0.3 and 0.1).
        scale: the factor from features to the plane (default 2).

    References:
        Grathwohl et al. 2019, FFJORD (the "pinwheel" toy).
    """

    name = "pinwheel"
    bound = 5.0
    floor_at_defaults = 0.0008
    defaults = {
        "arms": 5,
        "rate": 0.25,
        "radial_std": 0.3,
        "tangential_std": 0.1,
        "scale": 2.0,
    }

    def __init__(
        self,
        arms: int = 5,
        rate: float = 0.25,
        radial_std: float = 0.3,
        tangential_std: float = 0.1,
        scale: float = 2.0,
    ) -> None:
        self._set_constants(
            arms=arms, rate=rate, radial_std=radial_std, tangential_std=tangential_std, scale=scale
        )

    def _check_constants(self) -> None:
        check_int("pinwheel arms", self.arms, minimum=3)  # 3-fold symmetry: isotropic moments
        super()._check_constants()

    @property
    def classes(self) -> int:  # the arm
        return self.arms

    def extent(self) -> float:
        return self.scale * (1 + 5.3 * max(self.radial_std, self.tangential_std))

    @property
    def mean(self) -> Pair:
        return (0.0, 0.0)

    @property
    def covariance(self) -> tuple[Pair, Pair]:
        # K-fold symmetry (K >= 3) makes it isotropic; E|x|^2 = s^2 E|f|^2 = s^2 (1 + sr^2 + st^2)
        second = self.scale**2 * (1 + self.radial_std**2 + self.tangential_std**2)
        return _isotropic_cov(second / 2)

    def _window(self) -> float:
        """The window ``w`` on ``|r sin b|`` beyond ``r = 5.5`` (see the class docstring)."""
        gain = 1 / (2 * self.tangential_std**2) - 1 / (2 * self.radial_std**2)
        if gain <= 0:
            return math.inf
        default = 1 / (2 * 0.1**2) - 1 / (2 * 0.3**2)
        return _WINDOW_SIN * math.sqrt(default / gain)

    def _sample_labelled(self, n, g, device):
        f = _randn(n, g, device, 2) * torch.tensor(
            [self.radial_std, self.tangential_std], dtype=F64, device=device
        )
        f[:, 0] += 1
        k = _randint(self.arms, n, g, device)
        a = 2 * math.pi * k.to(F64) / self.arms + self.rate * f[:, 0].exp()
        c, s = a.cos(), a.sin()
        x = self.scale * torch.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], -1)
        return x, k

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

    def _log_prob(self, x, arm: int | None = None):
        r = x.norm(dim=1) / self.scale
        phi = torch.atan2(x[:, 1], x[:, 0])
        out = torch.empty_like(r)
        far = r > _FAR_RADIUS
        if far.any():
            out[far] = self._continuum(r[far]) + (0.0 if arm is None else math.log(self.arms))
        near = ~far
        if near.any():
            out[near] = self._root_sum(r[near], phi[near], arm)
        return out

    def _class_log_prob(self, x, k):
        return self._log_prob(x, k)

    def _continuum(self, r: Tensor) -> Tensor:
        gx, gw = (torch.from_numpy(a).to(r.device) for a in _gauss_legendre(64))
        w = torch.asin(torch.clamp(14 * self.tangential_std / r, max=1.0))[:, None]
        b = w * gx
        e = self._log_normal(r[:, None], b) + (w * gw).log()
        return torch.logsumexp(e, 1) - math.log(2 * math.pi * self.scale**2)

    def _root_sum(self, r: Tensor, phi: Tensor, arm: int | None = None) -> Tensor:
        """``log p(x)`` at ``x = 2r (cos phi, sin phi)``, summed over the preimages of ``x``
        (``log p(x | arm)``: over those on ``arm``).

        The preimages are the roots ``b`` of ``h(b) = b - 0.25 exp(r cos b) = phi + 2 pi m / 5``
        over the integers ``m`` (see the class docstring). In four vectorised steps, all points
        at once:

        1. ``_fold_edges``: the zeros of ``h'`` (where the map folds), by a safeguarded Newton
           solve on each side of the minimum of ``h'``;
        2. ``_monotone_pieces``: the pieces of the circle on which ``h`` is monotone, one
           increasing and, where the map folds, one decreasing;
        3. ``_levels``: on each piece, every level ``phi + 2 pi m / 5`` within the piece's
           range of ``h``, each of which has exactly one root there;
        4. ``_solve_levels``: each root by safeguarded Newton (Newton steps, bisection when a
           step leaves the bracket) inside its piece, started where the chord through the
           piece's ends meets the level.

        The terms ``N(f(b)) / (5 * 4 |h'(b)|)`` are then added per point in log space.
        """
        bl, br, fold = self._fold_edges(r)
        windowed = (r > _WINDOW_RADIUS) & math.isfinite(self._window())
        whole_turn = ~(fold | windowed)
        point, start, end, level, sign = [], [], [], [], []
        for a, b, s in self._monotone_pieces(r, bl, br):
            pid, lev, m = self._levels(r, phi, a, b, s, whole_turn if s > 0 else None)
            if arm is not None:  # the level's m says the arm
                keep = torch.remainder(m, self.arms) == arm
                pid, lev = pid[keep], lev[keep]
            point.append(pid)
            start.append(a[pid])
            end.append(b[pid])
            level.append(lev)
            sign.append(torch.full_like(lev, s))
        pid, a, b, level, sign = (torch.cat(v) for v in (point, start, end, level, sign))
        rr = r[pid]
        beta = self._solve_levels(rr, a, b, level, sign)
        jac = (self.scale**2 * self._dh(beta, rr)).abs()
        terms = self._log_normal(rr, beta) - jac.log()
        if arm is None:
            terms = terms - math.log(self.arms)
        return _logsumexp_by_index(terms, pid, len(r))

    def _h(self, b: Tensor, r: Tensor) -> Tensor:
        """``h(b) = b - 0.25 exp(r cos b)``, the image angle plus the arm's offset."""
        return b - self.rate * torch.exp(r * b.cos())

    def _dh(self, b: Tensor, r: Tensor) -> Tensor:
        """``h'(b) = 1 + 0.25 r sin b exp(r cos b)``."""
        return 1 + self.rate * r * b.sin() * torch.exp(r * b.cos())

    def _d2h(self, b: Tensor, r: Tensor) -> Tensor:
        """``h''(b) = 0.25 r exp(r cos b) (cos b - r sin^2 b)``."""
        return self.rate * r * torch.exp(r * b.cos()) * (b.cos() - r * b.sin().square())

    def _fold_edges(self, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The zeros ``bl < br`` of ``h'`` and the mask ``fold`` of the radii where they exist.

        ``h'`` has one minimum on the circle, at ``b* < 0`` with
        ``cos b* = 2r / (1 + sqrt(1 + 4 r^2))``, and one maximum, at ``-b*``. Where
        ``h'(b*) < 0`` the map folds: ``h'`` decreases through zero at ``bl`` in
        ``[-b* - 2 pi, b*]`` and increases through zero at ``br`` in ``[b*, -b*]``, each
        found by ``_newton_increasing``. Elsewhere ``bl = br = b*``.
        """
        bmin = -torch.arccos(2 * r / (1 + torch.sqrt(1 + 4 * r * r)))
        bmax = -bmin
        fold = self._dh(bmin, r) < 0
        bl, br = bmin.clone(), bmin.clone()
        if fold.any():
            rf, lo, mid, hi = r[fold], bmax[fold] - 2 * math.pi, bmin[fold], bmax[fold]
            bl[fold] = _newton_increasing(
                lambda b, i: (-self._dh(b, rf[i]), -self._d2h(b, rf[i])), lo, mid, (lo + mid) / 2
            )
            br[fold] = _newton_increasing(
                lambda b, i: (self._dh(b, rf[i]), self._d2h(b, rf[i])), mid, hi, (mid + hi) / 2
            )
        return bl, br, fold

    def _monotone_pieces(
        self, r: Tensor, bl: Tensor, br: Tensor
    ) -> list[tuple[Tensor, Tensor, float]]:
        """``(start, end, sign)`` of the pieces on which ``h`` is monotone.

        ``h`` increases on ``[br, bl + 2 pi]`` (sign +1) and decreases on ``[bl, br]``
        (sign -1, empty without a fold). For ``r > 5.5`` both are cut to the window
        ``|b| <= asin(w / r)`` (:meth:`_window`; ``w = 1.17`` at the defaults).
        """
        w = torch.where(
            r > _WINDOW_RADIUS, torch.asin(torch.clamp(self._window() / r, max=1.0)), math.inf
        )
        return [
            (br.maximum(-w), (bl + 2 * math.pi).minimum(w), 1.0),
            (bl.maximum(-w).minimum(br.maximum(-w)), br.maximum(-w), -1.0),
        ]

    def _levels(
        self,
        r: Tensor,
        phi: Tensor,
        a: Tensor,
        b: Tensor,
        sign: float,
        whole_turn: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Every level ``phi + 2 pi m / 5`` (over the integers ``m``) that ``h`` takes on a piece.

        The piece runs from ``a`` to ``b`` with ``h`` monotone of ``sign``; its range of ``h``
        is ``[low, high)``, which holds the levels ``m = ceil(y(low)), ..., ceil(y(high)) - 1``
        with ``y(v) = (v - phi) / (2 pi / 5)``. Where ``whole_turn`` is set (an increasing
        piece that is the entire circle) ``h`` gains exactly ``2 pi`` along it, so there are
        exactly 5 levels, counted without rounding.

        Returns:
            The index of each level's point in ``r``, the level itself and its ``m``, one entry
            per root.
        """
        low, high = self._h(a, r), self._h(b, r)
        if sign < 0:
            low, high = high, low
        delta = 2 * math.pi / self.arms
        y0 = (low - phi) / delta
        y1 = (high - phi) / delta
        if whole_turn is not None:
            y1 = torch.where(whole_turn, y0 + self.arms, y1)
        m0 = torch.ceil(y0)
        count = (torch.ceil(y1) - m0).clamp(min=0).long()
        pid = torch.arange(len(r), device=r.device).repeat_interleave(count)
        first = torch.cumsum(count, 0) - count
        m = m0[pid] + (torch.arange(len(pid), device=r.device) - first[pid])
        return pid, phi[pid] + delta * m, m

    def _solve_levels(self, r: Tensor, a: Tensor, b: Tensor, level: Tensor, sign: Tensor) -> Tensor:
        """The root ``beta`` of ``h(beta) = level`` between ``a`` and ``b``, elementwise.

        ``sign * (h - level)`` increases along the piece, so ``_newton_increasing`` applies;
        it starts where the chord from ``(a, h(a))`` to ``(b, h(b))`` meets the level.
        """
        ha, hb = self._h(a, r), self._h(b, r)
        frac = ((level - ha) / (hb - ha)).nan_to_num(0.5).clamp(0, 1)

        def g(beta, i):
            e = self.rate * torch.exp(r[i] * beta.cos())
            return sign[i] * (beta - e - level[i]), sign[i] * (1 + r[i] * beta.sin() * e)

        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        return _newton_increasing(g, lo, hi, a + frac * (b - a))


def _logsumexp_by_index(terms: Tensor, index: Tensor, size: int) -> Tensor:
    """``out[j] = log sum_{i: index[i] = j} exp(terms[i])`` (``-inf`` for an empty sum)."""
    top = torch.full((size,), -math.inf, dtype=terms.dtype, device=terms.device)
    top = top.scatter_reduce(0, index, terms, "amax")
    top = torch.where(torch.isfinite(top), top, 0.0)
    acc = torch.zeros(size, dtype=terms.dtype, device=terms.device)
    acc = acc.index_add_(0, index, torch.exp(terms - top[index]))
    return acc.log() + top
