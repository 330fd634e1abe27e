"""Small networks: the plain :class:`MLP` (NICE couplings) and the velocity field :class:`TimeMLP`.

:class:`TimeMLP` also returns its exact Jacobian with respect to ``x`` by forward-mode
propagation of the ``dim`` tangent directions through the layers, written out by hand. In 2D
this costs about three forward passes, needs no autograd graph of the Jacobian, and the result
stays differentiable w.r.t. the parameters, so a loss built on it (a CNF's log-likelihood) trains
by ordinary backpropagation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from genlab.checks import check_choice, check_int, check_positive

__all__ = ["ACTIVATIONS", "MLP", "TimeMLP", "check_fourier", "fourier_features", "get_activation"]

Activation = Callable[[Tensor], Tensor]
#: ``f'(z)`` from the pre-activation ``z`` and the activation ``a = f(z)`` already computed.
Derivative = Callable[[Tensor, Tensor], Tensor]


def _tanh_grad(z: Tensor, a: Tensor) -> Tensor:
    return 1 - a * a


def _softplus_grad(z: Tensor, a: Tensor) -> Tensor:
    return torch.sigmoid(z)


def _silu_grad(z: Tensor, a: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _elu_grad(z: Tensor, a: Tensor) -> Tensor:
    # elu(z) + 1 = exp(z) below 0: no exp of the unused branch (exp(z) would overflow to inf
    # there and turn the parameter gradient of torch.where into nan).
    return torch.where(z > 0, torch.ones_like(z), a + 1)


def _relu_grad(z: Tensor, a: Tensor) -> Tensor:
    return (z > 0).to(z.dtype)


#: name -> (activation ``f(z)``, its derivative ``f'(z)`` given ``z`` and ``a = f(z)``).
ACTIVATIONS: dict[str, tuple[Activation, Derivative]] = {
    "tanh": (torch.tanh, _tanh_grad),
    "softplus": (nn.functional.softplus, _softplus_grad),
    "silu": (nn.functional.silu, _silu_grad),
    "elu": (nn.functional.elu, _elu_grad),
    "relu": (torch.relu, _relu_grad),
}


def get_activation(name: str) -> tuple[Activation, Derivative]:
    """Look up an activation and its derivative.

    Arguments:
        name: one of the keys of :data:`ACTIVATIONS`.

    Returns:
        The pair ``(f, f')`` of elementwise functions; ``f'`` takes ``(z, f(z))``.
    """
    return ACTIVATIONS[check_choice("activation", name, ACTIVATIONS)]


def fourier_features(x: Tensor, b: Tensor | None) -> Tensor:
    """``[x, sin(2 pi x B^T), cos(2 pi x B^T)]``: random Fourier features (Tancik et al. 2020).

    Arguments:
        x: points of shape (N, D).
        b: frequencies of shape (F, D), in cycles per unit of ``x``; with ``None`` or
            ``F = 0``, ``x`` is returned as it is.

    Returns:
        Features of shape (N, D + 2F).
    """
    if b is None or not len(b):
        return x
    angle = 2 * math.pi * x @ b.to(x.dtype).T
    return torch.cat([x, torch.sin(angle), torch.cos(angle)], dim=1)


#: How Fourier frequencies are chosen: ``random`` draws them from N(0, scale^2) with the
#: run's generator (a different set each seed); ``quasi`` takes the first points of an
#: unscrambled Sobol sequence through the Gaussian quantile function, the same well-spread
#: set for every seed.
FOURIER_DRAWS = ("random", "quasi")


def fourier_frequencies(
    n: int, dim: int, scale: float, draw: str = "random", block: int = 0
) -> Tensor:
    """``n`` frequencies (n, dim) of standard deviation ``scale`` (see :data:`FOURIER_DRAWS`).

    ``quasi`` skips the Sobol sequence's first point (the origin, whose quantile is
    infinite) and maps the next ``n`` through the Gaussian quantile function, the first
    coordinate through the half-normal one: a feature pair is the same for ``b`` and ``-b``
    (up to the sine's sign), so frequencies in one half-space lose nothing, and the Sobol
    sequence's antipodal pairs would otherwise give the same feature twice. A deterministic
    set whose distribution tends to N(0, scale^2 I) folded onto that half-space with
    discrepancy ``O(log(n)^dim / n)`` instead of a random draw's ``O(n^-1/2)``.

    ``block``: the ``block``-th run of ``n`` points of the sequence (``quasi`` only), so that
    the layers of a stack (the couplings of a flow) read different frequencies whose union is
    as well spread as one set."""
    check_choice("fourier_draw", draw, FOURIER_DRAWS)
    if draw == "random" or n == 0:
        return torch.randn(n, dim) * scale
    sobol = torch.quasirandom.SobolEngine(dim, scramble=False)
    u = sobol.draw(1 + (block + 1) * n, dtype=torch.float64)[1 + block * n :]
    u[:, 0] = (1 + u[:, 0]) / 2  # the half-normal quantile of u is Phi^-1((1 + u) / 2)
    return (torch.special.ndtri(u) * scale).float()


def check_fourier(fourier: int, fourier_scale: float) -> None:
    """Validate a number of Fourier features (an int >= 0) and their scale (> 0)."""
    check_int("fourier", fourier, 0)
    check_positive("fourier_scale", fourier_scale)


class MLP(nn.Module):
    """A fully connected network: ``depth`` hidden layers of width ``hidden``, then a linear map.

    Arguments:
        in_dim: input features.
        out_dim: output features.
        hidden: width of every hidden layer.
        depth: number of hidden layers.
        activation: a name from :data:`ACTIVATIONS`.
        zero_last: zero-initialise the last layer (weights and bias), so that the network
            starts as the zero function (an identity coupling in NICE).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 128,
        depth: int = 3,
        activation: str = "relu",
        zero_last: bool = True,
    ) -> None:
        super().__init__()
        for name, value in [("in_dim", in_dim), ("out_dim", out_dim), ("hidden", hidden)]:
            check_int(name, value, 1)
        check_int("depth", depth, 1)
        self.activation = activation
        self.act, self.act_grad = get_activation(activation)
        widths = [in_dim] + [hidden] * depth + [out_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        if zero_last:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the network.

        Arguments:
            x: inputs of shape (..., in_dim).

        Returns:
            Outputs of shape (..., out_dim).
        """
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


class TimeMLP(nn.Module):
    """A time-conditioned velocity field ``v(t, x)`` on R^dim.

    The time enters as extra input features: ``"concat"`` appends ``t`` itself;
    ``"sinusoidal"`` appends ``t`` and ``sin(2 pi k t), cos(2 pi k t)`` for ``k = 1..frequencies``.
    With ``fourier > 0`` the points enter through random Fourier features too,
    ``[x, sin(2 pi B x), cos(2 pi B x)]`` with a fixed ``B`` (fourier, dim) drawn from
    ``N(0, fourier_scale^2)`` at construction: an MLP on raw 2D inputs learns thin structure
    (rings, spiral arms, sharp edges) slowly, a spectral bias these features remove.

    Arguments:
        dim: dimension of the points.
        hidden: width of every hidden layer.
        depth: number of hidden layers.
        activation: a name from :data:`ACTIVATIONS` (smooth ones suit CNFs).
        time_embedding: ``"concat"`` or ``"sinusoidal"``.
        frequencies: number of sinusoidal frequencies (``"sinusoidal"`` only).
        zero_last: zero-initialise the last layer (the field starts at zero).
        fourier: number of random Fourier features of ``x`` (0: raw ``x`` only).
        fourier_scale: standard deviation of their frequencies (cycles per unit of ``x``).
        fourier_draw: how the frequencies are chosen, :data:`FOURIER_DRAWS`.
        times: number of time inputs (MeanFlow's average velocity takes two, ``(t, r - t)``);
            with more than one, ``t`` is (B, times) or (times,) and each column is embedded.
        classes: number of classes of a conditional field (0: none). A learned embedding of
            ``classes + 1`` rows, the last one the null class of classifier-free guidance,
            enters beside the time; ``forward(t, x, y)`` takes the classes (B,), ``None``
            the null class.
        class_dim: width of the class embedding.

    References:
        Tancik et al. (2020), "Fourier Features Let Networks Learn High Frequency Functions in
        Low Dimensional Domains".
    """

    EMBEDDINGS = ("concat", "sinusoidal")

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        activation: str = "tanh",
        time_embedding: str = "concat",
        frequencies: int = 8,
        zero_last: bool = False,
        fourier: int = 0,
        fourier_scale: float = 1.0,
        times: int = 1,
        classes: int = 0,
        class_dim: int = 16,
        fourier_draw: str = "random",
    ) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        check_int("times", times, 1)
        check_int("classes", classes, 0)
        check_int("class_dim", class_dim, 1)
        self.classes = classes
        self.times = times
        check_fourier(fourier, fourier_scale)
        check_choice("time embedding", time_embedding, self.EMBEDDINGS)
        check_int("frequencies", frequencies, 1)
        self.dim = dim
        self.time_embedding = time_embedding
        self.frequencies = frequencies
        embed_dim = times * (1 if time_embedding == "concat" else 1 + 2 * frequencies)
        # A buffer: saved with the weights, so a loaded model has the same features.
        frequencies = fourier_frequencies(fourier, dim, fourier_scale, fourier_draw)
        self.register_buffer("fourier_b", frequencies)
        if classes:
            # made after the frequencies, so an unconditional field draws the same ones
            self.class_embedding = nn.Embedding(classes + 1, class_dim)
            embed_dim += class_dim
        self.net = MLP(dim + 2 * fourier + embed_dim, dim, hidden, depth, activation, zero_last)

    def _features(self, x: Tensor) -> Tensor:
        """``[x, sin(2 pi B x), cos(2 pi B x)]``, shape (B, dim + 2 * fourier)."""
        return fourier_features(x, self.fourier_b)

    def _feature_tangents(self, features: Tensor, w_x: Tensor) -> Tensor:
        """``w_x @ d features / d x_j`` for every input coordinate ``j``: the first layer's
        tangents, shape (dim, B, hidden), from ``features`` (B, dim + 2 * fourier) as
        :meth:`_features` gives them (their sines and cosines are reused) and ``w_x``
        (hidden, dim + 2 * fourier), the columns of the first weight that read them."""
        w_raw = w_x[:, : self.dim].T[:, None, :]  # (dim, 1, hidden): d x / d x_j = e_j
        if not len(self.fourier_b):
            return w_raw.expand(-1, features.shape[0], -1)
        b = 2 * math.pi * self.fourier_b.to(features.dtype).T[:, None, :]  # (dim, 1, F)
        sin, cos = features[:, self.dim :].chunk(2, dim=1)  # (B, F) each
        d_features = torch.cat([cos * b, -sin * b], dim=2)  # (dim, B, 2F)
        return w_raw + d_features @ w_x[:, self.dim :].T

    def _embed(self, t: Tensor | float, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Time (and class) features of shape (B, embed_dim) in ``x``'s dtype and device."""
        time = self._embed_time(t, x)
        if not self.classes:
            if y is not None:
                raise ValueError("this field has no class input (classes=0), but got classes")
            return time
        if y is None:
            y = torch.full((len(x),), self.classes, dtype=torch.long, device=x.device)
        elif y.shape != (len(x),):
            raise ValueError(f"y must have shape ({len(x)},), got {tuple(y.shape)}")
        return torch.cat([time, self.class_embedding(y).to(x.dtype)], dim=1)

    def _embed_time(self, t: Tensor | float, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape (B, {self.dim}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        n, k = x.shape[0], self.times
        if k == 1:
            if t.ndim == 0:
                t = t.expand(n)
            if t.shape != (n,):
                raise ValueError(f"t must be a scalar or have shape ({n},), got {tuple(t.shape)}")
            t = t[:, None]
        else:
            if t.shape == (k,):
                t = t.expand(n, k)
            if t.shape != (n, k):
                raise ValueError(f"t must have shape ({k},) or ({n}, {k}), got {tuple(t.shape)}")
        if self.time_embedding == "concat":
            return t
        freq = torch.arange(1, self.frequencies + 1, dtype=x.dtype, device=x.device)
        angle = 2 * math.pi * t[:, :, None] * freq  # (B, times, frequencies)
        return torch.cat([t, torch.sin(angle).flatten(1), torch.cos(angle).flatten(1)], dim=1)

    def forward(self, t: Tensor | float, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Evaluate the velocity.

        Arguments:
            t: time, a float, a 0-dim tensor or a (B,) tensor.
            x: points of shape (B, dim).
            y: classes (B,) of a conditional field; ``None``: the null class.

        Returns:
            The velocity, shape (B, dim).
        """
        return self.net(torch.cat([self._features(x), self._embed(t, x, y)], dim=1))

    def forward_with_jacobian(
        self, t: Tensor | float, x: Tensor, y: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Evaluate the velocity and its Jacobian w.r.t. ``x`` by forward-mode propagation.

        Each layer ``z = W h + b`` maps the tangents ``T_h`` (one (B, width) slab per input
        coordinate) to ``T_h W^T``, and an activation multiplies them by ``act'(z)``. The time
        features do not depend on ``x``, so only the columns of the first weight that read ``x``
        (and its Fourier features, through their own Jacobian) seed the tangents.
        Differentiable w.r.t. the parameters by ordinary autograd.

        Arguments:
            t: time, a float, a 0-dim tensor or a (B,) tensor.
            x: points of shape (B, dim).

        Returns:
            ``(v, J)`` with ``v`` of shape (B, dim) equal to ``forward(t, x)`` and ``J`` of
            shape (B, dim, dim), ``J[b, i, j] = d v_i / d x_j``.
        """
        layers = self.net.layers
        features = self._features(x)
        z = layers[0](torch.cat([features, self._embed(t, x, y)], dim=1))
        # Tangents are held as (dim, B, width), one (B, width) slab per input coordinate, so
        # that each layer maps all of them with one matrix product (not B tiny ones).
        tangents = self._feature_tangents(features, layers[0].weight[:, : features.shape[1]])
        for layer in layers[1:]:
            a = self.net.act(z)
            tangents = self.net.act_grad(z, a) * tangents
            z = layer(a)
            tangents = tangents @ layer.weight.T
        return z, tangents.permute(1, 2, 0)
