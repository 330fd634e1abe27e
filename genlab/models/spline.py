"""Monotone rational-quadratic splines with linear tails (neural spline flows).

A spline with ``K`` bins maps ``[-B, B]`` onto itself through the knots
``(x_k, y_k)``, ``k = 0..K`` (``x_0 = y_0 = -B``, ``x_K = y_K = B``), with positive derivatives
``d_k`` at the knots, ``d_0 = d_K = 1``; outside ``[-B, B]`` it is the identity, so value and
slope are continuous at both bounds. In bin ``k``, with ``w = x_{k+1} - x_k``,
``h = y_{k+1} - y_k``, ``s = h / w`` and ``xi = (x - x_k) / w`` in ``[0, 1]``:

    y  = y_k + h (s xi^2 + d_k xi (1 - xi)) / (s + (d_{k+1} + d_k - 2 s) xi (1 - xi))
    dy/dx = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2)
            / (s + (d_{k+1} + d_k - 2 s) xi (1 - xi))^2

The inverse solves ``a xi^2 + b xi + c = 0`` in the bin that holds ``y``, with
``a = h (s - d_k) + (y - y_k) e``, ``b = h d_k - (y - y_k) e``, ``c = -s (y - y_k)`` and
``e = d_{k+1} + d_k - 2 s``, by the root ``xi = 2c / (-b - sqrt(b^2 - 4ac))``: this form does
not cancel as ``a`` goes to 0 (a bin where the spline is almost linear).

The unconstrained parameters of a coordinate are ``3K - 1`` numbers: ``K`` widths and ``K``
heights (a softmax, with a least bin size), and ``K - 1`` inner derivatives (a softplus, with
a least slope), offset so that all zeros give the identity: equal bins and unit derivatives.

References:
    Durkan, Bekasov, Murray, Papamakarios. "Neural Spline Flows" (NeurIPS 2019), eqs. 4-8.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["knots", "rq_spline", "rq_spline_inverse"]

MIN_BIN = 1e-3  # least bin width and height, as a fraction of 2B
MIN_DERIVATIVE = 1e-3
# softplus(z + OFFSET) + MIN_DERIVATIVE = 1 at z = 0: zero parameters give unit derivatives
OFFSET = math.log(math.expm1(1 - MIN_DERIVATIVE))


def _knots(theta: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """The knots' ``x`` and ``y`` stacked, (..., 2, K + 1), and their derivatives (..., K + 1)."""
    bins = (theta.shape[-1] + 1) // 3
    if theta.shape[-1] != 3 * bins - 1:
        raise ValueError(f"a spline takes 3K - 1 parameters a coordinate, got {theta.shape[-1]}")
    sizes = torch.softmax(theta[..., : 2 * bins].unflatten(-1, (2, bins)), dim=-1)
    sizes = MIN_BIN + (1 - MIN_BIN * bins) * sizes  # widths and heights, fractions of 2B
    ends = torch.cumsum(sizes, dim=-1)
    ends = ends / ends[..., -1:]  # the last exactly 1 (x / x is 1 in floating point)
    xy = 2 * bound * F.pad(ends, (1, 0)) - bound  # exactly -B and B at the ends
    d = F.pad(MIN_DERIVATIVE + F.softplus(theta[..., 2 * bins :] + OFFSET), (1, 1), value=1.0)
    return xy, d


def knots(theta: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """The knots of the splines that ``theta`` (..., 3K - 1) describes.

    Returns:
        ``(x, y, d)``, each (..., K + 1): knot abscissae and ordinates from ``-B`` to ``B``, and
        the derivatives there (1 at both ends).
    """
    xy, d = _knots(theta, bound)
    return (*xy.unbind(-2), d)


def _bin(theta: Tensor, bound: float, v: Tensor, row: int) -> tuple[Tensor, ...]:
    """The ends of the bin holding ``v`` (...), found along the knots' ``x`` (``row`` 0) or
    ``y`` (1): ``x_k, x_{k+1}, y_k, y_{k+1}, d_k, d_{k+1}``, each shaped as ``v``."""
    xy, d = _knots(theta, bound)
    inner = xy[..., row, 1:-1].contiguous()
    k = torch.searchsorted(inner, v[..., None].contiguous(), right=True)  # 0..K-1
    k = torch.cat([k, k + 1], -1)
    ends = torch.gather(xy, -1, k[..., None, :].expand(*v.shape, 2, 2))
    return (*ends.flatten(-2).unbind(-1), *torch.gather(d, -1, k).unbind(-1))


def rq_spline(v: Tensor, theta: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """The spline of each entry of ``v`` (...) with its own parameters ``theta`` (..., 3K - 1).

    Returns:
        ``(y, log_dy_dx)``, both shaped as ``v``; identity and 0 outside ``[-B, B]``.
    """
    inside = (v >= -bound) & (v <= bound)
    vc = v.clamp(-bound, bound)
    x0, x1, y0, y1, d0, d1 = _bin(theta, bound, vc, 0)
    w, h = x1 - x0, y1 - y0
    s = h / w
    xi = ((vc - x0) / w).clamp(0, 1)
    xi1 = xi * (1 - xi)
    denom = s + (d1 + d0 - 2 * s) * xi1
    out = y0 + h * (s * xi * xi + d0 * xi1) / denom
    slope = s * s * (d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) ** 2) / (denom * denom)
    return torch.where(inside, out, v), torch.where(inside, slope.log(), torch.zeros_like(v))


def rq_spline_inverse(u: Tensor, theta: Tensor, bound: float) -> Tensor:
    """The inverse of :func:`rq_spline` at ``u`` (...), in closed form."""
    inside = (u >= -bound) & (u <= bound)
    uc = u.clamp(-bound, bound)
    x0, x1, y0, y1, d0, d1 = _bin(theta, bound, uc, 1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    e = d1 + d0 - 2 * s
    dy = uc - y0
    a = h * (s - d0) + dy * e
    b = h * d0 - dy * e
    c = -s * dy
    root = (b * b - 4 * a * c).clamp_min(0).sqrt()
    xi = (2 * c / (-b - root)).clamp(0, 1)
    return torch.where(inside, x0 + xi * w, u)
