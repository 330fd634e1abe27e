"""MeanFlow: a one-step generator trained from scratch by learning the average velocity.

Along the rectified flow's straight path ``x_t = (1 - t) x0 + t x1`` (t=0 noise, t=1 data, as
everywhere in genlab) the marginal velocity ``v(t, x)`` moves points along the ODE. The
*average* velocity from time ``t`` to a later time ``r`` is

    ``u(x_t, t, r) = 1/(r - t) * integral_t^r v(s, x_s) ds``,

so that ``x_r = x_t + (r - t) u(x_t, t, r)`` exactly: one network evaluation jumps any
interval, and ``x1 = z + u(z, 0, 1)`` is a one-step sample. Differentiating
``(r - t) u = integral_t^r v`` in ``t`` along the path gives the MeanFlow identity

    ``u(x_t, t, r) = v(t, x_t) + (r - t) d/dt u(x_t, t, r)``,
    ``d/dt u = v . grad_x u + d u / d t``,

whose right-hand side is the regression target, with the conditional velocity ``x1 - x0``
for ``v`` (its conditional expectation is the marginal one, as in flow matching) and the
total derivative from one forward-mode Jacobian-vector product with tangents ``(v, 1, 0)``.
The target is held fixed (no gradient flows through it). At ``r = t`` the target is plain
flow matching, so ``u(x, t, t)`` is the instantaneous velocity; a fraction ``1 - ratio`` of
each batch has ``r = t``.

The network sees ``(t, r - t)`` (the start and the length of the interval). The loss is
MeanFlow's adaptive one, ``sg(w) * |u - target|^2`` with ``w = 1 / (|u - target|^2 + c)^p``,
``c = 1e-3``: ``p = 0`` is the plain squared error, ``p = 1`` a robust one.

The model samples; it has no density (``has_density`` is false). A map from noise in one
step carries the prior to a distribution whose density would need the map's inverse, which
it does not have; the yardstick scores it by W2 and the truth's cross-entropy of its samples.
With ``steps=k`` it jumps ``k`` equal intervals (``k`` network evaluations).

Reference:
    Geng, Deng, Bai, Kolter, He (2025), "Mean Flows for One-step Generative Modeling".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad

from genlab.checks import check_choice, check_fraction, check_int, check_positive
from genlab.models.base import Model, StandardNormal, check_count, check_points
from genlab.models.flow import EMA
from genlab.ode import NFECounter

__all__ = ["MeanFlow"]

TIME_DISTRIBUTIONS = ("uniform", "logit_normal")
ADAPTIVE_C = 1e-3  # the adaptive loss weight's offset


class MeanFlow(Model):
    """The average velocity ``u(x, t, r)`` of the straight noise-to-data path, in one network.

    Arguments:
        network: ``network(times, x) -> (B, dim)`` with ``times`` (B, 2) holding
            ``(t, r - t)``: a :class:`genlab.nn.TimeMLP` with ``times=2``.
        ratio: fraction of each batch with ``r > t`` (the rest has ``r = t``, flow matching);
            in [0, 1].
        time_distribution: how the times are drawn (two, sorted, for ``r > t``):
            ``uniform`` or ``logit_normal`` (sigmoid of N(mean, std^2)).
        time_mean, time_std: the logit-normal's parameters.
        loss_power: the adaptive weight's power ``p`` (0: the plain squared error).
        steps: the default number of sampling steps (1: one-step generation).
        ema: decay of the EMA of the weights that sample (0 disables it).
        dim: dimension of the data.
    """

    name = "meanflow"
    has_density = False
    few_step_samplers = {"meanflow": {}}
    quality_steps = (1, 2, 4, 10, 20, 100)

    def __init__(
        self,
        network: nn.Module,
        ratio: float = 0.5,
        time_distribution: str = "uniform",
        time_mean: float = 0.0,
        time_std: float = 1.0,
        loss_power: float = 0.5,
        steps: int = 1,
        ema: float = 0.999,
        dim: int = 2,
    ) -> None:
        super().__init__()
        if getattr(network, "times", 2) != 2:
            raise ValueError(
                f"MeanFlow's network takes two times (t, r - t): set its times=2, "
                f"got times={network.times}"
            )
        self.ratio = check_fraction("ratio", ratio)
        self.time_distribution = check_choice(
            "time distribution", time_distribution, TIME_DISTRIBUTIONS
        )
        self.time_mean = float(time_mean)
        self.time_std = check_positive("time_std", time_std)
        self.loss_power = check_positive("loss_power", loss_power, zero=True)
        self.steps = check_int("steps", steps, 1)
        check_fraction("ema", ema)
        self.dim = dim
        self.network = network
        self.prior = StandardNormal(dim)
        self.counter = NFECounter()
        self.ema = EMA(network, ema) if ema > 0 else None

    @property
    def field(self) -> nn.Module:
        """The network that samples: the EMA weights when there are some."""
        return self.ema.module if self.ema is not None else self.network

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.network)

    @property
    def nfe(self) -> int:
        """Network evaluations so far (training not counted: only sampling calls count)."""
        return self.counter.count

    def average_velocity(self, x: Tensor, t: Tensor, r: Tensor, network=None) -> Tensor:
        """``u(x, t, r)`` at points ``x`` (B, dim) and times ``t``, ``r`` (each (B,))."""
        network = network or self.network
        return network(torch.stack([t, r - t], dim=1), x)

    def _draw(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        kw = {"device": like.device, "dtype": like.dtype}
        if self.time_distribution == "uniform":
            return torch.rand(shape, **kw)
        return torch.sigmoid(self.time_mean + self.time_std * torch.randn(shape, **kw))

    def _times(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(t, r)`` with ``t <= r`` in [0, 1]: for a fraction ``ratio`` of the rows two draws
        of the time distribution, sorted; for the others ``r = t``, one draw (so that flow
        matching sees every t as often as the rectified flow does, the data end too)."""
        pair = self._draw((2, n), like)
        single = self._draw((n,), like)
        apart = torch.rand(n, device=like.device, dtype=like.dtype) < self.ratio
        t = torch.where(apart, pair.min(0).values, single)
        return t, torch.where(apart, pair.max(0).values, single)

    def loss(self, x: Tensor) -> Tensor:
        """The MeanFlow loss on a data batch ``x`` (B, dim), with fresh noise and times."""
        check_points(x, self.dim)
        x0 = torch.randn_like(x)
        t, r = self._times(len(x), x)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x
        u, target = self.average_and_target(xt, t, r, x - x0)
        err = (u - target.detach()).square().sum(-1)
        if self.loss_power > 0:
            err = err / (err.detach() + ADAPTIVE_C) ** self.loss_power
        return err.mean()

    def average_and_target(
        self, xt: Tensor, t: Tensor, r: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``u(x_t, t, r)`` and the MeanFlow identity's right-hand side
        ``v + (r - t) (v . grad_x u + du/dt)``, from one forward-mode Jacobian-vector product
        with tangents ``(v, 1, 0)``; ``v`` (B, dim) is the velocity at ``x_t``. The target
        keeps its graph: the loss detaches it."""
        with forward_ad.dual_level():
            out = self.average_velocity(
                forward_ad.make_dual(xt, v), forward_ad.make_dual(t, torch.ones_like(t)), r
            )
            u, du_dt = forward_ad.unpack_dual(out)
        return u, v + (r - t)[:, None] * du_dt

    @torch.no_grad()
    def push(self, z: Tensor, steps: int) -> Tensor:
        """Carry noise ``z`` (B, dim) at t=0 to t=1 in ``steps`` equal jumps of the average
        velocity; one network evaluation each."""
        check_points(z, self.dim)
        times = torch.linspace(0.0, 1.0, steps + 1).tolist()
        x = z
        for t, r in zip(times[:-1], times[1:], strict=True):
            self.counter.count += 1
            tt = torch.full((len(x),), t, dtype=x.dtype, device=x.device)
            x = x + (r - t) * self.average_velocity(x, tt, torch.full_like(tt, r), self.field)
        return x

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, steps: int | None = None
    ) -> Tensor:
        """``n`` samples in ``steps`` network evaluations (default: the model's ``steps``)."""
        steps = check_int("steps", self.steps if steps is None else steps, 1)
        p = next(self.network.parameters())
        z = self.prior.sample(check_count(n), generator, device=p.device, dtype=p.dtype)
        return self.push(z, steps)

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError(
            "meanflow has no density: it samples in one step and the yardstick scores it by "
            "W2 and the truth's cross-entropy of its samples"
        )
