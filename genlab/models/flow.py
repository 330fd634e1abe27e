"""The continuous flows' common part: a velocity field ``v(t, x)`` and the ODE ``dx/dt = v``.

Time runs from t=0 (noise, the prior) to t=1 (data). Sampling integrates noise forwards;
``log_prob`` integrates data backwards to t=0 with the augmented state ``[x, log-det]``
(instantaneous change of variables, exact divergence) through :mod:`genlab.ode`, the one core
shared by the CNF, the rectified flow and diffusion, which differ in how they are trained and in
the samplers beside the ODE that they know (:mod:`genlab.sampling`).

References:
    Chen et al. (2018), "Neural Ordinary Differential Equations".
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from genlab.checks import check_choice, check_fraction, check_int
from genlab.models.base import (
    Model,
    Prior,
    StandardNormal,
    Transport,
    as_source,
    check_count,
    check_points,
)
from genlab.ode import SOLVERS, NFECounter, Solver, transport, transport_logdet
from genlab.sampling import Sampler, as_sampler

__all__ = ["EMA", "ContinuousFlow", "Guided", "SCREEN_TOLERANCE"]

#: The tolerance of the screening solve of :meth:`ContinuousFlow.figure_log_prob`.
SCREEN_TOLERANCE = 1e-2
#: Its box: a path that runs past this many times the largest screened coordinate (and 1)
#: stops there and its point takes the log-density -inf. At that distance the prior's
#: log-density is below -(100 |x|)^2 / 2 (-5,000 nats for |x| = 1), so no colour is lost.
SCREEN_ESCAPE = 100.0


class EMA(nn.Module):
    """Exponential moving average of a module's weights, for sampling and evaluation.

    ``module`` is a copy of the trained module; :meth:`update` blends the trained weights (and
    floating buffers) into it with decay ``min(decay, (1 + n) / (10 + n))`` after ``n``
    updates, a warm-up as in well-kept EMA implementations, so a short run evaluates trained
    weights and a long one the full average; the first update copies. ``n`` is the buffer
    ``n_averaged``, so the average resumes exactly with the weights. Its state-dict keys,
    ``module.*`` and ``n_averaged``, are those of ``torch.optim.swa_utils.AveragedModel``;
    unlike that one, it lists its tensor pairs once and blends them with one
    ``torch._foreach_lerp_`` per update, rather than walking both modules every step.

    Arguments:
        module: the trained module; it is copied (with ``requires_grad`` off), not held.
        decay: the decay the warm-up reaches, in (0, 1).
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must lie in (0, 1), got {decay!r}")
        # A frozen copy: never optimised, and not counted among the trained parameters.
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay = decay
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))
        self._pairs: tuple[int, list[Tensor], list[Tensor]] | None = None

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._pairs = None  # .to() / .cuda() may replace the buffers: list them again
        return super()._apply(fn, *args, **kwargs)

    def _tensors(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        """The averaged and the trained tensors, in pairs, listed once per source module."""
        if self._pairs is None or self._pairs[0] != id(model):
            ours = [*self.module.parameters(), *self.module.buffers()]
            theirs = [*model.parameters(), *model.buffers()]
            if len(ours) != len(theirs):
                raise ValueError("ema: the trained module does not match the averaged one")
            keep = [i for i, t in enumerate(ours) if t.is_floating_point()]
            self._pairs = (id(model), [ours[i] for i in keep], [theirs[i] for i in keep])
        return self._pairs[1], self._pairs[2]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights into the average (the first call copies them)."""
        averaged, current = self._tensors(model)
        n = int(self.n_averaged)
        if n == 0:
            torch._foreach_copy_(averaged, current)
        else:
            d = min(self.decay, (1.0 + n) / (10.0 + n))
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        self.n_averaged += 1


class Guided(nn.Module):
    """A conditional field given classes, with classifier-free guidance of scale ``w``.

    ``v_w(t, x) = v(t, x, null) + (1 + w) (v(t, x, y) - v(t, x, null))``: ``w = 0`` is the
    conditional field itself (one evaluation), ``w > 0`` pushes it away from the unconditional
    one (two evaluations, in one batch). Linear in the two fields, so its Jacobian is the same
    combination of theirs, and the exact divergence holds. The field's other outputs that are
    affine in its network's output with weights summing to one mix the same way, so that
    guiding the network guides them all: diffusion's predicted noise ``sigma x + network``
    (:meth:`noise`) and its ``(velocity, score)`` pair (:meth:`velocity_and_score`).

    Arguments:
        field: a field called as ``field(t, x, y)`` (``y=None``: the null class), with
            ``forward_with_jacobian(t, x, y)`` for the exact divergence.
        y: the classes, one per row of the points it will be called on (B,).
        w: the guidance scale (>= 0).

    References:
        Ho & Salimans (2022), "Classifier-Free Diffusion Guidance".
    """

    def __init__(self, field: nn.Module, y: Tensor, w: float = 0.0) -> None:
        super().__init__()
        self.field, self.y, self.w = field, y, float(w)

    def _mixed(self, fn, t, x: Tensor):
        """``fn(t, x, y)`` guided: one call at w=0, else one call on 2B rows (the points with
        their classes, then with the null class) whose halves are mixed, each output of a
        tuple alike."""
        if self.w == 0:
            return fn(t, x, self.y)
        n = len(x)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = (t.expand(n) if t.ndim == 0 else t).repeat(2)
        null = torch.full_like(self.y, self.field.classes)
        out = fn(t, x.repeat(2, 1), torch.cat([self.y, null]))

        def mix(v: Tensor) -> Tensor:
            return v[n:] + (1 + self.w) * (v[:n] - v[n:])

        return tuple(mix(v) for v in out) if isinstance(out, tuple) else mix(out)

    def forward(self, t, x: Tensor) -> Tensor:
        return self._mixed(self.field, t, x)

    def forward_with_jacobian(self, t, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._mixed(self.field.forward_with_jacobian, t, x)

    def noise(self, t, x: Tensor) -> Tensor:
        return self._mixed(self.field.noise, t, x)

    def velocity_and_score(self, t, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._mixed(self.field.velocity_and_score, t, x)


class ContinuousFlow(Model, Transport):
    """A model defined by a velocity field and its source distribution at t=0.

    The source is the standard normal unless a subclass takes another (the rectified flow
    carries any toy to any other): sampling starts from its samples, and ``log_prob`` adds its
    exact log-density at the end of the backward solve.

    Arguments:
        velocity: the field, called as ``velocity(t, x)``; a :class:`genlab.nn.TimeMLP` or a
            module that has its ``forward_with_jacobian`` (the exact divergence).
        sampler: how ``sample`` draws by default (overridable per call): a
            :class:`genlab.sampling.Sampler` whose method is one of ``methods``, or an ODE
            :class:`genlab.ode.Solver`.
        likelihood: the solver ``log_prob`` uses; the divergence there is always exact.
        dim: dimension of the data.
        ema: decay of the exponential moving average of the weights used to sample and
            evaluate (0 disables it). It warms up: after ``n`` updates the decay is
            ``min(ema, (1 + n) / (10 + n))``, so a short run evaluates trained weights and a
            long one the full average.
        source: the distribution at t=0: ``None`` (N(0, I)), a :class:`Prior`, or any
            object with ``name``, ``sample(n, generator)`` and an exact ``log_prob(x)`` (a
            toy; see :class:`genlab.models.base.SourcePrior`).
        classes: number of classes of a conditional flow (0: unconditional); the velocity
            must take them (``velocity(t, x, y)``, ``y=None`` the null class, as a
            :class:`genlab.nn.TimeMLP` with the same ``classes``). ``sample``, ``push`` and
            ``log_prob`` then take the classes ``y``; without them they are the null class's,
            the unconditional flow that label dropout trains.
        label_dropout: the share of a conditional flow's training rows whose class is
            replaced by the null class (:meth:`_training_classes`), which trains the
            unconditional field beside the conditional one (classifier-free guidance).
    """

    few_step_samplers = {"euler": {"method": "euler"}}
    #: The methods ``sample`` knows: the ODE solvers, and in subclasses methods of their own.
    methods: tuple[str, ...] = SOLVERS

    def __init__(
        self,
        velocity: nn.Module,
        sampler: Sampler | Solver,
        likelihood: Solver,
        dim: int = 2,
        ema: float = 0.0,
        source=None,
        classes: int = 0,
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_fraction("ema", ema)
        check_int("classes", classes, 0)
        check_fraction("label_dropout", label_dropout)
        if getattr(velocity, "classes", 0) != classes:
            raise ValueError(
                f"the flow has classes={classes}, its velocity "
                f"classes={getattr(velocity, 'classes', 0)}: they must agree"
            )
        self.classes, self.label_dropout = classes, label_dropout
        self.dim = dim
        self.velocity = velocity
        self.prior: Prior = as_source(source, dim)
        self.sampler = self._check_method(as_sampler(sampler))
        self.likelihood = likelihood
        self.counter = NFECounter()
        self.ema = EMA(velocity, ema) if ema > 0 else None

    @property
    def source(self) -> str:
        """The name of the distribution at t=0 (``gaussian``, or the source toy's)."""
        return self.prior.name

    @property
    def gaussian_source(self) -> bool:
        """Whether the flow starts from N(0, I) (what its Gaussian-path formulas assume)."""
        return isinstance(self.prior, StandardNormal)

    @property
    def field(self) -> nn.Module:
        """The field used to sample and to evaluate: the EMA weights when there are some."""
        return self.ema.module if self.ema is not None else self.velocity

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.velocity)

    def _check_method(self, sampler: Sampler) -> Sampler:
        check_choice(f"{self.name} sampler", sampler.method, self.methods)
        return sampler

    def _given(self, y, n: int, guidance: float = 0.0) -> nn.Module:
        """The field the solves use: :attr:`field`, or given classes ``y`` (an int for all
        ``n`` points, or (n,)) the :class:`Guided` conditional field."""
        if y is None:
            return self.field
        if not self.classes:
            raise ValueError(f"{self.name} is not conditional (classes=0): it takes no classes")
        p = next(self.velocity.parameters())
        y = torch.as_tensor(y, device=p.device)
        if y.is_floating_point() or y.ndim > 1:
            raise ValueError(f"classes must be an int or integer tensor (n,), got {y.dtype}")
        y = y.long().expand(n) if y.ndim == 0 else y.long()
        if y.shape != (n,):
            raise ValueError(f"{len(y)} classes for {n} points")
        if len(y) and (y.min() < 0 or y.max() >= self.classes):
            bad = y[(y < 0) | (y >= self.classes)][:1].item()
            raise ValueError(f"class {bad} of {self.name}: its classes are 0..{self.classes - 1}")
        return Guided(self.field, y, guidance)

    def _training_classes(self, y: Tensor | None) -> Tensor | None:
        """The classes a training batch gives the field: ``None`` for an unconditional flow,
        else ``y`` with a ``label_dropout`` share of them replaced by the null class (drawn
        from torch's global generator). Refuses labels the flow cannot take, and a
        conditional flow's batch without them."""
        if self.classes and y is None:
            raise ValueError(f"a conditional {self.name} trains on labelled data: loss(x, y)")
        if y is None:
            return None
        if not self.classes:
            raise ValueError(f"{self.name} is not conditional (classes=0): it takes no classes")
        drop = torch.rand(len(y), device=y.device) < self.label_dropout
        return torch.where(drop, self.classes, y)

    @property
    def nfe(self) -> int:
        """Velocity evaluations so far, over every solve (training, sampling, likelihood)."""
        return self.counter.count

    def _noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        p = next(self.velocity.parameters())
        return self.prior.sample(check_count(n), generator, device=p.device, dtype=p.dtype)

    def _training_noise(self, like: Tensor) -> Tensor:
        """A fresh source batch the size of the data batch ``like``, from torch's global
        generator (which the checkpoint saves): ``randn_like`` for the Gaussian source."""
        if self.gaussian_source:
            return torch.randn_like(like)
        return self.prior.sample(len(like), None, device=like.device, dtype=like.dtype)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        method: str | None = None,
        steps: int | None = None,
        y: Tensor | int | None = None,
        **options,
    ) -> Tensor:
        """Carry ``n`` noise points from t=0 to t=1. Returns (n, dim).

        Keywords override the configured sampler, e.g. ``sample(n, method="euler", steps=1)``;
        ``options`` are its other fields (``atol``, ``rtol``, ``eta``, ``noise``, ``guidance``).
        ``y``: the classes of a conditional flow (an int, or (n,)), sampled with the sampler's
        classifier-free ``guidance``; ``None`` samples the null class, unguided.
        """
        sampler = self._check_method(self.sampler.replace(method=method, steps=steps, **options))
        z = self._noise(n, generator)
        if sampler.is_ode:
            return self.push(z, solver=sampler.ode_solver, y=y, guidance=sampler.guidance)
        return self.sample_with(z, sampler, generator, self._given(y, n, sampler.guidance))

    def sample_with(
        self,
        z: Tensor,
        sampler: Sampler,
        generator: torch.Generator | None,
        field: nn.Module | None = None,
    ) -> Tensor:
        """Carry noise ``z`` (B, dim) at t=0 to t=1 with one of the model's own methods, those
        of ``methods`` that are not ODE solvers, on ``field`` (default :attr:`field`; the
        guided field given classes, see :meth:`_given`). Returns (B, dim)."""
        raise NotImplementedError(f"{self.name} has no sampler {sampler.method!r}")

    def push(
        self,
        z: Tensor,
        t0: float = 0.0,
        t1: float = 1.0,
        solver: Solver | None = None,
        y: Tensor | int | None = None,
        guidance: float = 0.0,
    ):
        """Transport points ``z`` (B, dim) along the ODE from time ``t0`` to ``t1`` with
        ``solver`` (default: the sampler's), given classes ``y`` with ``guidance`` for a
        conditional flow; returns (B, dim)."""
        check_points(z, self.dim)
        solver = solver or self.sampler.ode_solver
        field = self._given(y, len(z), guidance)
        return transport(field, z, t0, t1, solver, counter=self.counter).x

    def trajectories(
        self, n: int, generator: torch.Generator | None = None, points: int = 65
    ) -> Tensor:
        """ODE paths of ``n`` noise points at ``points`` equally spaced times from 0 to 1,
        solved by dopri5 at the sampler's tolerances whatever its method (see
        :attr:`genlab.sampling.Sampler.path_solver`).

        Returns:
            (points, n, dim), the first entry the noise, the last the samples.
        """
        times = torch.linspace(0.0, 1.0, points).tolist()
        z = self._noise(n, generator)
        solver = self.sampler.path_solver
        with torch.no_grad():
            return transport(self.field, z, 0.0, 1.0, solver, times=times, counter=self.counter).x

    def log_prob(
        self,
        x: Tensor,
        t: float = 1.0,
        solver: Solver | None = None,
        y: Tensor | int | None = None,
    ) -> Tensor:
        """Exact log-density of ``x`` (B, dim) under the flow's marginal at time ``t``.

        ``t=1`` (default) is the model's density of data; ``t=0`` the prior's. Integrates from
        ``t`` back to 0 with ``d log-det/dt = div v`` and ``solver`` (default: the likelihood
        solver). ``y``: the classes of a conditional flow, for ``log q(x | y)`` of its unguided
        conditional field; ``None``: the null class's density. Returns (B,).
        """
        return self._log_prob(x, t, solver, y)

    def _log_prob(self, x, t, solver, y, escape: float | None = None) -> Tensor:
        """:meth:`log_prob`; with ``escape`` (see :func:`genlab.ode.transport_logdet`), -inf
        at the points whose backward path leaves the box ``|x|_inf <= escape``."""
        check_points(x, self.dim)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t!r}")
        if t == 0.0:
            return self.prior.log_prob(x)
        solver = solver or self.likelihood
        field = self._given(y, len(x))
        sol = transport_logdet(
            field, x, t, 0.0, solver, divergence="exact", counter=self.counter, escape=escape
        )
        out = self.prior.log_prob(sol.x) + sol.delta_logp
        if escape is not None:
            out = out.masked_fill(sol.x.abs().amax(-1) > escape, -math.inf)
        return out

    def figure_log_prob(self, x: Tensor, t: float = 1.0, floor: float | None = None) -> Tensor:
        """:meth:`log_prob` for a figure, whose colours show nothing far below the peak.

        With ``floor``, a screening solve at :data:`SCREEN_TOLERANCE` comes first, and only
        the points it puts above ``floor`` are solved by the likelihood solver; the others get
        ``min(screen, floor)``. Far from the data the flow is stiff: the points that no colour
        shows cost most of an exact solve (on diffusion's grid, a quarter of the points took
        four fifths of the steps), and the screen's error there, a few nats, is far smaller
        than the margin the figures keep (:data:`genlab.figures.FLOOR_NATS`). A point whose
        screening path runs off (past :data:`SCREEN_ESCAPE` times the grid's reach) gets -inf
        there instead of failing the screen of every point: far outside the data, a field
        the data never trained can send a point to infinity, where its density is 0."""
        if floor is None:
            return self.log_prob(x, t)
        screen = self.likelihood.replace(atol=SCREEN_TOLERANCE, rtol=SCREEN_TOLERANCE)
        escape = SCREEN_ESCAPE * max(1.0, float(x.abs().max())) if len(x) else None
        out = self._log_prob(x, t, screen, None, escape).clamp(max=floor)
        shown = out >= floor
        if shown.any():
            out[shown] = self.log_prob(x[shown], t).to(out.dtype)
        return out
