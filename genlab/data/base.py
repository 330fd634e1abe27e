"""The ``Toy`` base class and the helpers every toy shares.

``Toy`` holds the public interface (``sample``, ``log_prob``, ``entropy``, ``mean``,
``covariance``) and its input checks; a subclass supplies ``_sample``, ``_log_prob``, ``mean``
and ``covariance``. The private helpers draw float64 randomness from the caller's generator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from genlab.checks import check_int, check_positive

__all__ = ["Toy", "F64", "Pair", "toy_label"]

F64 = torch.float64
ENTROPY_STEP = 0.01  # grid step h of entropy()
_ENTROPIES: dict[tuple, float] = {}  # entropy() of each toy (Toy._cache_key), once a process
_BLOCK = 1 << 19  # elements of one (points x nodes) block: bounds memory, stays in cache
_LOG2PI = math.log(2 * math.pi)

Pair = tuple[float, float]


def _check_n(n: int) -> int:
    """``n`` as a Python int if it is an int >= 1 (numpy integers too, bools not), else raise
    ``number of samples must be an int >= 1, got <n>``."""
    return check_int("number of samples", n, minimum=1)


def _midpoints(bound: float, h: float) -> Tensor:
    m = round(2 * bound / h)
    return -bound + h * (torch.arange(m, dtype=F64) + 0.5)


class Toy:
    """A 2D toy distribution: sampler, exact log-density, grid entropy, exact moments.

    Subclasses set ``name`` and ``bound`` and implement ``_sample`` (float64 points on a
    device) and ``_log_prob`` (float64 in, float64 out), ``mean`` and ``covariance``.
    ``bound`` is the half-width of a square box ``[-bound, bound]^2`` that holds all but
    less than 1e-6 of the mass; plots and grid integration use it.

    ``constant_log_det_floor`` is the lowest ``KL(p || q)`` (nats) from this toy ``p`` that a
    flow ``q`` whose Jacobian determinant is the same everywhere (NICE: additive couplings
    plus one diagonal scaling) with a standard Gaussian prior can reach; ``None`` when not
    known. Such a ``q`` is the prior moved by a map that scales every area by one factor, so
    the areas of its level sets ``{q > c}`` are those of an isotropic Gaussian of some
    variance ``s^2``; only their shapes are free. ``E_p[log q]`` is then largest (in the limit,
    never attained) when ``q`` ranks the points as ``p`` does, which gives
    ``floor = 1 + log E_p[A(x)] - H(p)``, where ``A(x)`` is the area of ``{y: p(y) >= p(x)}``
    and ``2 pi s^2 = E_p[A]`` is the best variance. For a uniform density ``A`` is uniform on
    ``[0, area]``, so ``E_p[A] = area / 2``, ``H = log area`` and the floor is exactly
    ``1 - log 2`` (the checkerboard). The other floors are this formula evaluated on the
    ``entropy`` grid (step 0.01), to 4 decimals, at the toy's default constants.

    **Constants.** A toy's defining constants (a radius, a noise, a scale, a number of modes)
    are its constructor's arguments, listed with their defaults in ``defaults`` (FFJORD's
    toys); the sampler, the exact density, the moments and the classes follow them. A value
    within 1e-9 (relative) of its default is the default itself, so a config that writes
    ``4 / 1.414`` to ten digits builds the default toy. Off the defaults (``custom``) the
    floor is ``None`` (it was computed for the defaults only) and the box grows to hold the
    toy: ``bound`` is then the default box or ``extent()`` rounded up to a half, whichever is
    larger.
    """

    name: str = ""
    bound: float = 4.0
    #: The defining constants and their defaults; the constructor takes each by name.
    defaults: dict[str, object] = {}
    #: The number of natural classes (the parts a sample is drawn from: a mode, an arm, a
    #: ring, a square); 0 for a toy without them.
    classes: int = 0
    #: The constant-Jacobian floor at the default constants (see the class docstring).
    floor_at_defaults: float | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.custom.items())
        return f"{type(self).__name__}({args})"

    @property
    def constants(self) -> dict[str, object]:
        """The toy's defining constants, by name (tuples for pairs and lists)."""
        return {k: getattr(self, k) for k in self.defaults}

    @property
    def custom(self) -> dict[str, object]:
        """The constants that differ from their defaults (empty for the default toy)."""
        return {k: v for k, v in self.constants.items() if v != self.defaults[k]}

    @property
    def label(self) -> str:
        """The toy's name, with its custom constants if it has any: ``moons (sigma=0.3)``."""
        return toy_label(self.name, self.custom)

    @property
    def constant_log_det_floor(self) -> float | None:
        """Lowest KL (nats) from this toy reachable by a constant-Jacobian flow (NICE) with a
        standard Gaussian prior; ``None`` if unknown (off the default constants)."""
        return None if self.custom else self.floor_at_defaults

    def extent(self) -> float:
        """A half-width that holds all but less than 1e-6 of the mass, from the constants."""
        raise NotImplementedError

    def _set_constants(self, **given) -> None:
        """Check and set the constants (each positive unless the toy's own check says
        otherwise), snap each within 1e-9 of its default to it, and size the box."""
        for key, value in given.items():
            default = self.defaults[key]
            if isinstance(default, tuple):
                value = tuple(_real(f"{self.name} {key}", v) for v in value)
                close = len(value) == len(default) and all(
                    _close(v, d) for v, d in zip(value, default, strict=True)
                )
            elif isinstance(default, int):
                value = check_int(f"{self.name} {key}", value, minimum=1)
                close = value == default
            else:
                value = _real(f"{self.name} {key}", value)
                close = _close(value, default)
            setattr(self, key, default if close else value)
        self._check_constants()
        if self.custom:
            self.bound = max(type(self).bound, math.ceil(2 * self.extent()) / 2)

    def _check_constants(self) -> None:
        """Raise ``ValueError`` naming a constant outside the toy's range (default: every
        real constant > 0)."""
        for key, value in self.constants.items():
            for v in value if isinstance(value, tuple) else (value,):
                check_positive(f"{self.name} {key}", v)

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

    @property
    def class_probs(self) -> tuple[float, ...]:
        """The probability of each class (equal weights unless a toy says otherwise)."""
        self._check_labelled()
        return (1.0 / self.classes,) * self.classes

    def sample_labelled(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` i.i.d. points with the class each was drawn from.

        The points are exactly those of ``sample(n, generator)`` from the same generator
        state; ``ValueError`` for a toy without classes.

        Returns:
            ``(x, y)``: points (n, 2), float32, and their classes (n,), int64 in
            ``0..classes-1``, on the generator's device.
        """
        self._check_labelled()
        n = _check_n(n)
        device = generator.device if generator is not None else torch.device("cpu")
        x, y = self._sample_labelled(n, generator, device)
        return x.to(torch.float32), y.long()

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Exact log-density ``log p(x)``, or ``log p(x | y)`` given classes, in nats
        (``-inf`` outside the support).

        Computed in float64 on ``x.device`` from the detached input (not differentiable).
        The class-weighted mixture of the conditional densities is the unconditional one.

        Arguments:
            x: points, a tensor of shape (B, 2) (else ``ValueError``).
            y: ``None`` for the unconditional density, or each point's class, an integer
                tensor of shape (B,) with values in ``0..classes-1`` (else ``ValueError``).

        Returns:
            Tensor of shape (B,) in ``x.dtype`` (float64 for integer input) on ``x.device``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (B, 2), got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"expected points of shape (B, 2), got {tuple(x.shape)}")
        if y is not None:
            y = self._check_classes(y, len(x))
        dtype = x.dtype if x.is_floating_point() else F64
        xd = x.detach().to(F64)
        if len(xd) == 0:
            return torch.empty(0, dtype=dtype, device=x.device)
        rows = max(1, _BLOCK // self._block_cols())
        if y is None:
            return torch.cat([self._log_prob(c) for c in xd.split(rows)]).to(dtype)
        out = torch.empty(len(xd), dtype=F64, device=x.device)
        y = y.to(x.device)
        for k in range(self.classes):
            idx = (y == k).nonzero().squeeze(1)
            for part in idx.split(rows):
                out[part] = self._class_log_prob(xd[part], k).to(F64)
        return out.to(dtype)

    def _check_labelled(self) -> None:
        if not self.classes:
            raise ValueError(f"{self.name} has no classes: its parts are not natural labels")

    def _check_classes(self, y, n: int) -> Tensor:
        """``y`` if it is an integer tensor of ``n`` classes of this toy, else raise."""
        self._check_labelled()
        if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.ndim != 1:
            got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y)
            raise ValueError(f"classes must be an integer tensor of shape (B,), got {got}")
        if len(y) != n:
            raise ValueError(f"{len(y)} classes for {n} points")
        if len(y) and (y.min() < 0 or y.max() >= self.classes):
            bad = y[(y < 0) | (y >= self.classes)][0].item()
            raise ValueError(f"class {bad} of {self.name}: classes are 0..{self.classes - 1}")
        return y

    def entropy(self) -> float:
        """Differential entropy ``H = -int p log p`` by grid integration, cached in the process
        for every instance of the same toy (the pinwheel's takes seconds; a sweep's runs share
        it).

        Midpoint rule with step h = 0.01 over ``[-bound, bound]^2``:
        ``H ~ -h^2 sum_ij p(c_ij) log p(c_ij)`` with ``p log p = 0`` where ``p = 0``.

        Returns:
            The entropy in nats.
        """
        cached = self.__dict__.get("_entropy")
        key = self._cache_key()
        if cached is None and key is not None:
            cached = _ENTROPIES.get(key)
        if cached is None:
            c = _midpoints(self.bound, ENTROPY_STEP)
            total = torch.zeros((), dtype=F64)
            rows = max(1, (1 << 18) // len(c))  # a few MB per block of the grid
            for c1 in c.split(rows):
                lp = self._grid_log_prob(c1, c)
                p = lp.exp()
                total += torch.where(p > 0, p * lp, 0.0).sum()
            cached = -total.item() * ENTROPY_STEP**2
            if key is not None:
                _ENTROPIES[key] = cached
        self.__dict__["_entropy"] = cached
        return cached

    def _cache_key(self) -> tuple | None:
        """What defines this toy: its class, bound and public attributes; ``None`` when one
        of them cannot be a key (then nothing is shared between instances)."""
        items = tuple(sorted((k, v) for k, v in vars(self).items() if not k.startswith("_")))
        key = (type(self).__module__, type(self).__qualname__, self.bound, items)
        try:
            hash(key)
        except TypeError:
            return None
        return key

    # -- for subclasses -----------------------------------------------------------------------

    def _block_cols(self) -> int:
        """Work per point (e.g. quadrature nodes); ``log_prob`` chunks rows by it."""
        return 64

    def _sample(self, n: int, g: torch.Generator | None, device: torch.device) -> Tensor:
        if self.classes:
            return self._sample_labelled(n, g, device)[0]
        raise NotImplementedError

    def _sample_labelled(self, n: int, g, device) -> tuple[Tensor, Tensor]:
        """Points (float64) and their classes; a labelled toy's ``_sample`` is its points."""
        raise NotImplementedError

    def _class_log_prob(self, x: Tensor, k: int) -> Tensor:
        """``log p(x | class k)``, float64 in and out."""
        raise NotImplementedError

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _grid_log_prob(self, x1: Tensor, x2: Tensor) -> Tensor:
        """``log p`` on the mesh ``x1 x x2``, shape (len(x1), len(x2)), float64 on the CPU."""
        pts = torch.stack(torch.meshgrid(x1, x2, indexing="ij"), -1).reshape(-1, 2)
        return self.log_prob(pts).reshape(len(x1), len(x2))


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _close(value: float, default: float) -> bool:
    return abs(value - default) <= 1e-9 * max(1.0, abs(default))


def toy_label(name: str, constants: dict | None) -> str:
    """``moons (scale=3, offset=(-1, -1))``: a toy's name with the constants it was given
    (tuples, or the lists ``metrics.json`` holds), the name alone without them."""
    if not constants:
        return name

    def short(v) -> str:
        if isinstance(v, tuple | list):
            return "(" + ", ".join(short(x) for x in v) + ")"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return f"{name} ({', '.join(f'{k}={short(v)}' for k, v in constants.items())})"


def _rand(n, g, device, *shape) -> Tensor:
    return torch.rand(n, *shape, generator=g, device=device, dtype=F64)


def _randn(n, g, device, *shape) -> Tensor:
    return torch.randn(n, *shape, generator=g, device=device, dtype=F64)


def _randint(k, n, g, device) -> Tensor:
    return torch.randint(0, k, (n,), generator=g, device=device)


def _isotropic_cov(var: float) -> tuple[Pair, Pair]:
    return ((var, 0.0), (0.0, var))


def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)
