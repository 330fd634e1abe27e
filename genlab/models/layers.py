"""Invertible layers: the parts every discrete normalizing flow of genlab is stacked from.

Every layer maps data-side points to latent-side points with ``forward(x) -> (y, log_det)``,
where ``log_det`` (shape (B,)) is ``log |det dy/dx|`` at each point, and undoes itself exactly
with ``inverse(y) -> x``. :class:`genlab.models.invertible.InvertibleFlow` composes them.

- :class:`AdditiveCoupling` (NICE): ``y_b = x_b + m(x_a)``, log-det exactly 0;
- :class:`AffineCoupling` (RealNVP, Glow): ``y_b = x_b exp(s(x_a)) + t(x_a)``, log-det
  ``sum(s)``, with ``s`` bounded;
- :class:`SplineCoupling` (neural spline flows): ``y_b`` a monotone rational-quadratic spline
  of ``x_b`` whose knots ``x_a`` sets;
- :class:`DiagonalScaling` (NICE): ``y = x exp(s)``, log-det ``sum(s)``;
- :class:`ActNorm` (Glow): ``y = (x + loc) exp(s)``, initialised from the first batch;
- :class:`LULinear` (Glow): ``y = W x`` with ``W = P L U`` (the 1x1 convolution of a point).

A coupling splits the coordinates by parity: ``b`` (``i % 2 == parity``) is transformed, ``a``
passes through and is all the conditioner reads, so the inverse is exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genlab.checks import check_choice, check_int, check_positive
from genlab.models import spline
from genlab.nn import MLP, check_fourier, fourier_features, fourier_frequencies

__all__ = [
    "alternating",
    "Coupling",
    "AdditiveCoupling",
    "AffineCoupling",
    "SplineCoupling",
    "DiagonalScaling",
    "ActNorm",
    "LULinear",
    "LINEAR_STARTS",
]

LINEAR_STARTS = ("random", "fixed", "identity", "even")  # how :class:`LULinear` starts
FIXED_ROTATION_SEED = 20_180_709  # ``fixed`` rotations: layer k's generator seed is this + k


class Coupling(nn.Module):
    """``y_a = x_a``, ``y_b = g(x_b; theta(x_a))``: a coupling layer with conditioner ``m``.

    Subclasses say how many numbers ``theta`` has per transformed coordinate
    (``params_per_dim``) and implement ``transform(x_b, theta) -> (y_b, log_det)`` and
    ``untransform(y_b, theta) -> x_b``, ``theta`` of shape (B, len(b), params_per_dim).

    Arguments:
        dim: dimension of the points.
        parity: coordinates ``i`` with ``i % 2 == parity`` form ``b``, the transformed half.
        hidden, depth, activation: the conditioner MLP ``m``.
        identity_init: start ``m``'s last layer at zero (with the subclasses' parametrisation
            the layer then starts as the identity); else torch's default initialisation.
        fourier: random Fourier features of ``x_a`` that ``m`` reads beside ``x_a`` (0: ``x_a``
            only); ``m`` still depends on ``x_a`` alone, so the inverse stays exact.
        fourier_scale: standard deviation of their frequencies (cycles per unit of ``x_a``).
        fourier_draw: how they are chosen, :data:`genlab.nn.FOURIER_DRAWS`.
        fourier_block: which run of the quasi-random sequence they take (the layer's index in
            its stack, so that the layers read different frequencies).
    """

    params_per_dim = 1

    def __init__(
        self,
        dim: int,
        parity: int,
        hidden: int = 128,
        depth: int = 3,
        activation: str = "relu",
        identity_init: bool = False,
        fourier: int = 0,
        fourier_scale: float = 1.0,
        fourier_draw: str = "random",
        fourier_block: int = 0,
    ) -> None:
        super().__init__()
        check_fourier(fourier, fourier_scale)
        self.b = slice(parity, None, 2)  # transformed coordinates
        self.a = slice(1 - parity, None, 2)  # coordinates the conditioner reads
        n_a, self.n_b = len(range(dim)[self.a]), len(range(dim)[self.b])
        # A buffer: saved with the weights, so a loaded model has the same features. None
        # without features: a checkpoint without the buffer loads.
        frequencies = (
            fourier_frequencies(fourier, n_a, fourier_scale, fourier_draw, fourier_block)
            if fourier
            else None
        )
        self.register_buffer("fourier_b", frequencies)
        out = self.n_b * self.params_per_dim
        self.m = MLP(n_a + 2 * fourier, out, hidden, depth, activation, zero_last=identity_init)

    def theta(self, x: Tensor) -> Tensor:
        """The conditioner's output for the points ``x``: (B, len(b), params_per_dim)."""
        return self.m(fourier_features(x[:, self.a], self.fourier_b)).view(len(x), self.n_b, -1)

    def transform(self, x_b: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def untransform(self, y_b: Tensor, theta: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(y, log_det)``, ``log_det`` of shape (B,)."""
        y_b, log_det = self.transform(x[:, self.b], self.theta(x))
        y = x.clone()
        y[:, self.b] = y_b
        return y, log_det

    def inverse(self, y: Tensor) -> Tensor:
        """Exact inverse: ``y_a`` is ``x_a``, so ``theta`` is known and ``g`` is undone."""
        x = y.clone()
        x[:, self.b] = self.untransform(y[:, self.b], self.theta(y))
        return x


def alternating(
    coupling: type[Coupling], count: int, dim: int, *conditioner, **options
) -> list[Coupling]:
    """``count`` couplings of one kind, alternating which half they transform (parity 0 first).

    Arguments:
        coupling: the coupling class.
        count: how many (an int >= 1; the error names it ``couplings``).
        dim: dimension of the points.
        conditioner: ``hidden, depth, activation, identity_init, fourier, fourier_scale,
            fourier_draw``, as in :class:`Coupling`; the k-th coupling's ``fourier_block`` is k.
        options: the coupling's own keywords (``scale_bound``, ``bins``, ``bound``).
    """
    check_int("couplings", count, 1)
    return [coupling(dim, k % 2, *conditioner, fourier_block=k, **options) for k in range(count)]


class AdditiveCoupling(Coupling):
    """``y_b = x_b + m(x_a)``: a shear with Jacobian determinant exactly 1 (NICE).

    References:
        Dinh, Krueger, Bengio. "NICE: Non-linear Independent Components Estimation" (2014).
    """

    def transform(self, x_b: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        return x_b + theta[..., 0], x_b.new_zeros(len(x_b))  # log-det exactly 0

    def untransform(self, y_b: Tensor, theta: Tensor) -> Tensor:
        return y_b - theta[..., 0]


class AffineCoupling(Coupling):
    """``y_b = x_b exp(s) + t`` with ``s = c tanh(s_raw / c)``; log-det ``sum(s)``.

    The soft clamp keeps each log-scale in ``(-c, c)`` (``c = scale_bound``) and is the identity
    near 0, so one large conditioner output cannot blow a point up and training stays stable.

    Arguments:
        scale_bound: ``c`` above; the rest as in :class:`Coupling`.

    References:
        Dinh, Sohl-Dickstein, Bengio. "Density estimation using Real NVP" (ICLR 2017).
    """

    params_per_dim = 2

    def __init__(self, *args, scale_bound: float = 3.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scale_bound = check_positive("scale_bound", scale_bound)

    def _scale_shift(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        c = self.scale_bound
        return c * torch.tanh(theta[..., 0] / c), theta[..., 1]

    def transform(self, x_b: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(theta)
        return x_b * s.exp() + t, s.sum(-1)

    def untransform(self, y_b: Tensor, theta: Tensor) -> Tensor:
        s, t = self._scale_shift(theta)
        return (y_b - t) * torch.exp(-s)


class SplineCoupling(Coupling):
    """``y_b`` a monotone rational-quadratic spline of ``x_b`` on ``[-bound, bound]``, with
    ``bins`` bins whose widths, heights and inner-knot derivatives the conditioner gives; the
    identity outside (log-det 0 there). See :mod:`genlab.models.spline`.

    Arguments:
        bins: number of bins ``K``; the conditioner gives ``3K - 1`` numbers a coordinate.
        bound: half-width ``B`` of the spline's interval.
        the rest: as in :class:`Coupling`. With ``identity_init`` the spline starts as the
            identity (equal bins, unit derivatives).

    References:
        Durkan, Bekasov, Murray, Papamakarios. "Neural Spline Flows" (NeurIPS 2019).
    """

    def __init__(self, *args, bins: int = 8, bound: float = 4.0, **kwargs) -> None:
        self.bins = check_int("bins", bins, 2)
        self.params_per_dim = 3 * bins - 1
        super().__init__(*args, **kwargs)
        self.bound = check_positive("bound", bound)

    def transform(self, x_b: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        y_b, log_det = spline.rq_spline(x_b, theta, self.bound)
        return y_b, log_det.sum(-1)

    def untransform(self, y_b: Tensor, theta: Tensor) -> Tensor:
        return spline.rq_spline_inverse(y_b, theta, self.bound)


class DiagonalScaling(nn.Module):
    """``y = x * exp(s)`` with learned log-scales ``s``; log-det ``sum(s) = sum(log|scale|)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale)


class ActNorm(nn.Module):
    """``y = (x + loc) * exp(s)``, per coordinate; log-det ``sum(s)``.

    Data-dependent initialisation: the first ``forward`` in training mode sets ``loc`` and
    ``s`` so that its batch leaves with zero mean and unit variance in every coordinate. The
    flag ``initialized`` is a buffer, saved in the checkpoint with ``loc`` and ``s``: a resumed
    or loaded model is not initialised again.

    References:
        Kingma, Dhariwal. "Glow: Generative Flow with Invertible 1x1 Convolutions" (2018).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Zero mean and unit variance for the batch ``x`` (B >= 2) after the layer."""
        self.loc.copy_(-x.mean(0))
        self.log_scale.copy_(-x.std(0).clamp_min(1e-6).log())
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized and len(x) > 1:
            self.initialize(x)
        return (x + self.loc) * self.log_scale.exp(), self.log_scale.sum().expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.loc


class LULinear(nn.Module):
    """``y = W x`` with ``W = P L (U + diag(sign * exp(s)))``; log-det ``sum(s)``.

    ``P`` is a fixed permutation, ``L`` unit lower triangular and ``U`` strictly upper
    triangular (both learned), and the diagonal's signs are fixed, so ``W`` stays invertible
    and its determinant costs nothing. ``W`` starts as a rotation (its LU factors), as Glow's
    1x1 convolutions do; in 2D that mixes the two coordinates the couplings split.

    Arguments:
        dim: dimension of the points.
        start: the starting rotation. ``random``: drawn from the global generator, so a new
            one for every seed (Glow's own start); ``fixed``: drawn from a generator seeded
            with ``block`` alone, so the same for every seed (a stack's layers still differ
            from each other); ``identity``: ``W = I``.
            ``even`` (2D only): a rotation by ``pi / blocks``, so that in a stack of
            ``blocks`` layers between alternating couplings the directions the couplings
            transform start evenly spread over the half-circle.
        block: the layer's index in its stack (``fixed`` only).
        blocks: the number of such layers in the stack (``even`` only).

    References:
        Kingma, Dhariwal. "Glow: Generative Flow with Invertible 1x1 Convolutions" (2018).
    """

    def __init__(self, dim: int, start: str = "random", block: int = 0, blocks: int = 1) -> None:
        super().__init__()
        check_choice("linear_start", start, LINEAR_STARTS)
        check_int("block", block, 0)
        check_int("blocks", blocks, 1)
        if start == "identity":
            q = torch.eye(dim)
        elif start == "even":
            if dim != 2:
                raise ValueError(f"linear_start 'even' is defined in 2D; dim is {dim}")
            c, s = math.cos(math.pi / blocks), math.sin(math.pi / blocks)
            q = torch.tensor([[c, -s], [s, c]])
        else:
            generator = None
            if start == "fixed":
                generator = torch.Generator().manual_seed(FIXED_ROTATION_SEED + block)
            q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        self.register_buffer("permutation", p)
        self.register_buffer("sign", diag.sign())
        self.register_buffer("lower_index", torch.tril_indices(dim, dim, -1))
        self.register_buffer("upper_index", torch.triu_indices(dim, dim, 1))
        self.lower = nn.Parameter(lower[tuple(self.lower_index)])
        self.upper = nn.Parameter(upper[tuple(self.upper_index)])
        self.log_diag = nn.Parameter(diag.abs().log())

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(len(self.sign), dtype=self.lower.dtype, device=self.lower.device)
        lower = eye.index_put(tuple(self.lower_index), self.lower)
        upper = torch.diag(self.sign * self.log_diag.exp())
        upper = upper.index_put(tuple(self.upper_index), self.upper)
        return lower, upper

    def weight(self) -> Tensor:
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x @ self.weight().T, self.log_diag.sum().expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        lower, upper = self._factors()
        z = self.permutation.T @ y.T  # P^-1 = P^T
        z = torch.linalg.solve_triangular(lower, z, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, z, upper=True).T
