"""The common model interface, training stages, capabilities and the priors.

Every genlab model is a :class:`Model`: a ``torch.nn.Module`` with ``loss``, ``log_prob`` and
``sample`` (named as in ``torch.distributions``), and the list of :class:`Stage` it trains in.
Models that move noise to data along a path also are a :class:`Transport`; models built of
invertible layers that can show noise pushed through them one layer at a time are
:class:`Layered`. The trainer,
metrics, plots and report use only these interfaces, never a model's class or name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral

import torch
from torch import Tensor, nn

from genlab.checks import check_choice, check_int
from genlab.memory import check_fits

__all__ = [
    "Model",
    "Stage",
    "Transport",
    "Layered",
    "Prior",
    "StandardNormal",
    "StandardLogistic",
    "SourcePrior",
    "as_source",
    "make_prior",
    "check_points",
    "check_count",
    "CHUNK",
]

#: Points a model's own ``sample`` and ``log_prob`` code is given at once. A larger request is
#: split into chunks of this size and the results are written into one output, so its memory
#: is the result's plus one chunk's work: 50 million samples take time, not RAM. Requests of
#: up to this size run in one piece, exactly as the model's code does.
CHUNK = 1 << 16


@dataclass(frozen=True)
class Stage:
    """One training stage of a model; a model trains in its stages, in order.

    Attributes:
        name: label of the stage in the progress bar and the log (``"train"``, ``"reflow 1"``).
        steps: optimiser steps of the stage; ``None`` takes the run's ``train.steps``.
        loss: ``loss(*batch) -> Tensor``; ``None`` means ``model.loss`` on fresh data batches.
        make_data: draws the stage's fixed training set once, when the stage starts, as
            ``make_data(generator) -> tuple of tensors`` with equal first dims (for example
            reflow's (noise, sample) pairs); batches are rows of it drawn with replacement.
            ``None``: the stage trains on fresh data batches.
        report: the model's own diagnostics at the end of the stage,
            ``report(generator, n, data) -> {name: float}``, where ``data`` is the stage's
            training set (``None`` for data stages). Only models with more than one stage are
            reported per stage.
    """

    name: str = "train"
    steps: int | None = None
    loss: Callable[..., Tensor] | None = None
    make_data: Callable[[torch.Generator], tuple[Tensor, ...]] | None = None
    report: Callable[[torch.Generator, int, tuple[Tensor, ...] | None], dict] | None = None


def check_points(x: Tensor, dim: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a batch of points of shape (B, dim)."""
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected points of shape (B, {dim}), got {shape}")


def check_count(n: int) -> int:
    """Return ``n`` if it is an int >= 1, else raise ``ValueError`` naming it."""
    return check_int("number of samples", n, 1)


def _in_chunks(fn: Callable, n: int, pieces) -> Tensor:
    """The results of ``fn`` on each of ``pieces`` (``(start, piece)`` pairs, in order),
    written into one preallocated output of ``n`` rows."""
    out = None
    for start, piece in pieces:
        part = fn(piece)
        if out is None:
            out = part.new_empty((n, *part.shape[1:]))
        out[start : start + len(part)] = part
    return out


def _chunked_sample(fn: Callable) -> Callable:
    """``sample(n, ...)`` in chunks of ``self.chunk`` points (each drawn with the same keywords
    and, in turn, from the same generator), refused before any work if the result would not
    fit in memory."""

    @functools.wraps(fn)
    def sample(self, n, *args, **kwargs):
        chunk = self.chunk
        if not isinstance(n, Integral) or isinstance(n, bool) or n <= chunk:
            return fn(self, n, *args, **kwargs)
        params = next(self.parameters(), None)
        itemsize = 4 if params is None else params.element_size()
        check_fits(
            f"sample({n:,}) of {self.name}",
            n * self.dim * itemsize,
            "draw fewer points, or several draws one after another",
            None if params is None else params.device,
        )
        y = kwargs.get("y")
        if not isinstance(y, Tensor) or y.ndim == 0:
            sizes = ((start, min(chunk, n - start)) for start in range(0, n, chunk))
            return _in_chunks(lambda k: fn(self, k, *args, **kwargs), n, sizes)
        # classes, one per point: each chunk takes its own
        if len(y) != n:
            raise ValueError(f"{len(y)} classes for {n} points")
        rest = {k: v for k, v in kwargs.items() if k != "y"}
        pieces = ((start, y[start : start + chunk]) for start in range(0, n, chunk))
        return _in_chunks(lambda part: fn(self, len(part), *args, y=part, **rest), n, pieces)

    sample._chunked = True
    return sample


def _chunked_log_prob(fn: Callable) -> Callable:
    """``log_prob(x, ...)`` over chunks of ``self.chunk`` rows of ``x``."""

    @functools.wraps(fn)
    def log_prob(self, x, *args, **kwargs):
        chunk = self.chunk
        if not isinstance(x, Tensor) or x.ndim != 2 or len(x) <= chunk:
            return fn(self, x, *args, **kwargs)
        y = kwargs.get("y")
        if not isinstance(y, Tensor) or y.ndim == 0:
            parts = ((i * chunk, part) for i, part in enumerate(x.split(chunk)))
            return _in_chunks(lambda part: fn(self, part, *args, **kwargs), len(x), parts)
        # classes, one per point: each chunk of points takes its own
        if len(y) != len(x):
            raise ValueError(f"{len(y)} classes for {len(x)} points")
        rest = {k: v for k, v in kwargs.items() if k != "y"}
        pairs = zip(x.split(chunk), y.split(chunk), strict=True)
        parts = ((i * chunk, xy) for i, xy in enumerate(pairs))
        return _in_chunks(lambda xy: fn(self, xy[0], *args, y=xy[1], **rest), len(x), parts)

    log_prob._chunked = True
    return log_prob


class Model(nn.Module):
    """A generative model of points in R^dim.

    Subclasses set ``name`` and implement the three methods below. Models with an internal
    count of velocity evaluations expose it as ``nfe`` (``None`` otherwise); the trainer
    records it per step. ``constant_log_det`` says that the model's Jacobian determinant is
    the same everywhere (NICE), which bounds its KL from below: the yardstick reports that
    floor beside it. ``has_density = False`` says that the model only samples (a one-step
    generator): its ``log_prob`` raises, and the yardstick, figures and report give it the
    exact measures that need no density of the model (W2, the truth's cross-entropy of its
    samples), never a made-up KL.

    Few-step samplers are listed in ``few_step_samplers``: names mapped to the ``sample``
    keywords that select them (the step count is added as ``steps=k``); a name is lowercase
    letters and underscores, since the step count follows it in metric keys
    (``w2_euler10``); an entry's ``nfe_per_step: n`` (not passed to ``sample``) scores it at
    ``k // n`` steps, at the NFE of the others. ``quality_steps`` are the step counts at which
    the end-of-run yardstick scores each of them (W2, NFE and seconds, drawn in
    ``quality_vs_steps.png``); empty, as by default, it does not (a model with several stages
    is scored at the end of each instead).

    Every subclass's ``sample`` and ``log_prob`` run in bounded memory: a request of more than
    ``chunk`` points (:data:`CHUNK`) is split into chunks that the subclass's own code handles
    one after another, and a ``sample`` whose result would not fit is refused before any work
    (:class:`genlab.errors.TooLarge`). A chunked ``sample`` draws each chunk from the generator
    in turn, and the NFE it counts is the sum over the chunks' solves.
    """

    name: str = "model"
    dim: int = 2
    #: The distribution a transport starts from (``gaussian``: its own noise).
    source: str = "gaussian"
    #: The number of classes of a conditional model (0: unconditional). Such a model trains
    #: on labelled batches, ``loss(x, y)``, and its ``sample`` and ``log_prob`` take ``y``.
    classes: int = 0
    constant_log_det: bool = False
    has_density: bool = True
    chunk: int = CHUNK
    few_step_samplers: dict[str, dict] = {}
    quality_steps: tuple[int, ...] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for method, wrap in (("sample", _chunked_sample), ("log_prob", _chunked_log_prob)):
            fn = cls.__dict__.get(method)
            if callable(fn) and not getattr(fn, "_chunked", False):
                setattr(cls, method, wrap(fn))

    def loss(self, x: Tensor) -> Tensor:
        """Scalar training objective on a data batch ``x`` of shape (B, dim)."""
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density in nats of ``x`` (B, dim); returns shape (B,)."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples; returns shape (n, dim)."""
        raise NotImplementedError

    def figure_log_prob(self, x: Tensor, floor: float | None = None, **kwargs) -> Tensor:
        """The log-density the figures draw (keywords as ``log_prob``'s, e.g. ``t`` of a
        :class:`Transport`): ``log_prob`` itself by default. ``floor``: a figure shows nothing
        below it, so a model whose ``log_prob`` is a costly solve may return any value up to
        ``floor`` where the density is surely below it, without the exact solve there."""
        return self.log_prob(x, **kwargs)

    def stages(self) -> list[Stage]:
        """What the model trains on, in order; one stage on data batches by default."""
        return [Stage()]

    def after_step(self) -> None:
        """Called by the trainer after every optimiser step (e.g. to update an EMA)."""

    @property
    def nfe(self) -> int | None:
        """Cumulative number of velocity evaluations, or ``None`` for models without an ODE."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class Transport:
    """The capability of models that carry noise (t=0) to data (t=1) along a path.

    Such a model has a density ``log_prob(x, t)`` at every time of the path and can show the
    paths themselves; the figures draw trajectories and snapshots of p_t for every model that
    is a ``Transport``; its ``log_prob(x, t)`` draws p_t when the model ``has_density``.
    """

    def log_prob(self, x: Tensor, t: float = 1.0) -> Tensor:
        """Log-density of ``x`` (B, dim) under the path's marginal at time ``t``; (B,)."""
        raise NotImplementedError

    def trajectories(
        self, n: int, generator: torch.Generator | None = None, points: int = 65
    ) -> Tensor:
        """Paths of ``n`` noise points at ``points`` equally spaced times from 0 to 1.

        Returns:
            (points, n, dim), the first entry the noise, the last the samples.
        """
        raise NotImplementedError


class Layered:
    """The capability of models that turn noise into data through a stack of invertible layers.

    The figures animate such a model by pushing prior points through its layers one at a time
    (NICE: the scaling layer's inverse, then each coupling's inverse, last to first).
    """

    def layer_states(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` prior points and where each layer of the noise-to-data map takes them.

        Returns:
            (layers + 1, n, dim): the first entry the prior points, then the points after each
            layer in the order applied, the last exactly ``sample(n, generator)`` (for ``n`` up
            to the model's ``chunk``; a larger ``sample`` draws its noise chunk by chunk).
        """
        raise NotImplementedError


class Prior(nn.Module):
    """A base distribution on R^dim: a model's noise, or the source a transport starts from.

    ``name`` says which (``gaussian``, ``logistic``, or the source toy's name)."""

    name: str = "prior"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def log_prob(self, z: Tensor) -> Tensor:
        """Log-density of ``z`` (B, dim); returns (B,)."""
        raise NotImplementedError

    def sample(
        self, n: int, generator: torch.Generator | None = None, device=None, dtype=None
    ) -> Tensor:
        """Draw ``n`` points; returns (n, dim)."""
        raise NotImplementedError


class StandardNormal(Prior):
    """N(0, I)."""

    name = "gaussian"

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z * z).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, n, generator=None, device=None, dtype=None):
        return torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)


class StandardLogistic(Prior):
    """Independent standard logistic coordinates, log p(z) = -sum(softplus(z) + softplus(-z))."""

    name = "logistic"

    def log_prob(self, z: Tensor) -> Tensor:
        return -(nn.functional.softplus(z) + nn.functional.softplus(-z)).sum(-1)

    def sample(self, n, generator=None, device=None, dtype=None):
        u = torch.rand(n, self.dim, generator=generator, device=device, dtype=dtype)
        tiny = torch.finfo(u.dtype).tiny
        u = u.clamp(tiny, 1 - torch.finfo(u.dtype).eps)
        return torch.log(u) - torch.log1p(-u)


class SourcePrior(Prior):
    """Any distribution with an exact density as the base of a transport: a toy as the source.

    Wraps an object with ``name``, ``sample(n, generator) -> (n, dim)`` and an exact
    ``log_prob(x) -> (B,)`` (a :class:`genlab.data.Toy`); its samples are moved to the
    requested device and dtype. The toy's log-density is exact but not differentiable, which
    suits the models that need it only to evaluate (the rectified flow's ``log_prob``), not
    those that train through it (the CNF's maximum likelihood).
    """

    def __init__(self, distribution, dim: int) -> None:
        super().__init__(dim)
        for need in ("sample", "log_prob"):
            if not callable(getattr(distribution, need, None)):
                raise TypeError(
                    f"a source needs sample(n, generator) and log_prob(x); "
                    f"{type(distribution).__name__} has no {need}"
                )
        self.distribution = distribution
        self.name = getattr(distribution, "name", "") or type(distribution).__name__

    def extra_repr(self) -> str:
        return repr(self.distribution)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.distribution.log_prob(z)

    def sample(self, n, generator=None, device=None, dtype=None):
        return self.distribution.sample(n, generator).to(device=device, dtype=dtype)


def as_source(source, dim: int) -> Prior:
    """The base distribution of a transport: N(0, I) for ``None``, a :class:`Prior` as it is,
    any other distribution (a toy) wrapped in a :class:`SourcePrior`."""
    if source is None:
        return StandardNormal(dim)
    if isinstance(source, Prior):
        if source.dim != dim:
            raise ValueError(f"the source is {source.dim}-dimensional, the model {dim}")
        return source
    return SourcePrior(source, dim)


PRIORS = {"normal": StandardNormal, "logistic": StandardLogistic}


def make_prior(name: str, dim: int) -> Prior:
    """Build the prior called ``name`` (``normal`` or ``logistic``)."""
    return PRIORS[check_choice("prior", name, PRIORS)](dim)
