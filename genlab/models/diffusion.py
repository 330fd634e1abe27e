"""A variance-preserving diffusion model (DDPM) in genlab's time, sampled four ways, exact density.

Time runs from t=0 (noise) to t=1 (data), as everywhere in genlab. The papers' diffusion time
``s`` runs the other way (s=0 data, s=1 noise); here ``s(t) = s_max - t (s_max - eps)``, so
every path, density and figure of :class:`genlab.models.flow.ContinuousFlow` works unchanged.

- **Path.** ``x_t = alpha(t) x_data + sigma(t) e`` with ``e ~ N(0, I)`` and
  ``alpha^2 + sigma^2 = 1``; ``lambda(t) = log(alpha^2 / sigma^2)`` (the log-SNR) increases
  with t, at the rate ``lambda' = beta(s) / sigma^2 * (s_max - eps)``.
- **The epsilon.** Both ends are truncated, so that every coefficient below is finite. The data
  end t=1 is diffusion time ``s = eps`` (default 1e-3: ``sigma(1) = 0.0105`` for the linear
  schedule, 0.0064 for the cosine one), as in Song et al. (2021): the model's density at t=1 is
  the data's blurred by that sigma. The noise end t=0 is ``s_max``: 1 for the linear schedule
  (``alpha(0) = exp(-(beta_min + beta_max) / 4) = 0.0066``) and 0.9946 for the cosine one
  (``alpha(0) = 0.0084``, where DPM-Solver truncates it). The prior at t=0 is N(0, I), the
  true marginal there up to terms of order ``alpha(0)``.
- **Network and loss.** The predicted noise is ``e_hat(t, x) = sigma(t) x + network(c(t), x)``
  with a :class:`genlab.nn.TimeMLP`: ``sigma x`` is the exact prediction for N(0, I) data, so
  the network learns how the data differ from the prior (a skip connection, as in the
  preconditioning of Karras et al. 2022); a zero network is the prior at every t, and its
  errors are not amplified where alpha is small. Its time input is the noise level
  ``c = lambda / 8`` (Karras et al. feed ``log(sigma / alpha) / 4``, the same up to sign),
  which spreads the low noise levels that the linear schedule crowds into t > 0.9. The loss
  is DDPM's simple one, ``E |e_hat(t, x_t) - e|^2`` with ``t ~ U[0, 1]``. EMA weights sample
  and evaluate.
- **Probability-flow ODE.** ``v = alpha' x_hat + sigma' e_hat`` with
  ``x_hat = (x - sigma e_hat) / alpha`` simplifies, by ``alpha' = alpha sigma^2 lambda' / 2`` and
  ``sigma' = -sigma alpha^2 lambda' / 2``, to ``v(t, x) = lambda' sigma / 2 * (sigma x - e_hat)
  = -lambda' sigma / 2 * network(c, x)`` (no division by alpha), and its Jacobian to
  ``-lambda' sigma / 2 * d network/dx``: the network's forward-mode Jacobian makes ``div v``
  exact, so ``log_prob`` is exact through :mod:`genlab.ode` like the other continuous models',
  with the same likelihood solver settings, and any ODE solver samples.
- **Samplers** (``Sampler.method``): ``ancestral``, DDPM's reverse step (DDIM with eta=1);
  ``ddim`` with ``eta`` (0: deterministic); ``dpmpp_2m``, DPM-Solver++(2M), the multistep
  second-order solver of the probability-flow ODE in data prediction and log-SNR (Lu et al.
  2022b); ``heun``, EDM's second-order Heun steps on ``d x~ / d sigma~ = e_hat`` in the
  scaled variables ``x~ = x / alpha``, ``sigma~ = sigma / alpha``, with optional ``churn``
  (Karras et al. 2022); ``sde``, Euler-Maruyama on the reverse SDE with
  ``g(t)^2 = noise * sigma^2 lambda'`` (noise=1 is the time reversal of the forward
  diffusion; :func:`genlab.sampling.marginal_sde`); the ODE solvers. The model's own methods
  place their ``steps`` by the sampler's ``spacing`` (:func:`genlab.sampling.step_times`:
  uniform in t, in log-SNR, or Karras' rho=7); the ODE solvers take equal steps in t.

References:
    Ho, Jain, Abbeel (2020), "Denoising Diffusion Probabilistic Models".
    Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential
    Equations" (the VP SDE, its linear beta(s), the probability-flow ODE and its likelihood).
    Song, Meng, Ermon (2021), "Denoising Diffusion Implicit Models".
    Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models" (cosine).
    Lu et al. (2022), "DPM-Solver" (the cosine schedule's truncation at s = 0.9946).
    Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models"
    (skip connections around the network; Heun's sampler, its sigma spacing and churn).
    Lu et al. (2022b), "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models" (the 2M multistep update).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genlab.checks import check_choice, check_int, check_positive
from genlab.models.base import check_points
from genlab.models.flow import ContinuousFlow
from genlab.ode import SOLVERS, Solver
from genlab.sampling import Sampler, marginal_sde, step_times, time_of_log_snr

__all__ = ["SCHEDULES", "VPSchedule", "ProbabilityFlow", "Diffusion"]

SCHEDULES = ("linear", "cosine")
COSINE_END = 0.9946  # the cosine schedule's noise end in diffusion time (alpha = 0.0084)
LOG_SNR_SCALE = 4.0  # the network's time input is lambda / 8 = log(alpha / sigma) / 4


@dataclass(frozen=True)
class VPSchedule:
    """``alpha(t)``, ``sigma(t)`` and ``lambda'(t)`` of a variance-preserving path.

    Arguments:
        kind: ``linear``: ``beta(s) = beta_min + s (beta_max - beta_min)``, so
            ``alpha(s)^2 = exp(-beta_min s - (beta_max - beta_min) s^2 / 2)`` (DDPM's betas
            1e-4 ... 0.02 over 1000 steps, times 1000); ``cosine``:
            ``alpha(s)^2 = f(s) / f(0)``, ``f(s) = cos^2(pi/2 (s + c) / (1 + c))`` with
            ``c = cosine_offset``.
        eps: the diffusion time of the data end t=1 (> 0).
        beta_min, beta_max: the linear schedule's rates at s=0 and s=1.
        cosine_offset: the cosine schedule's ``c``.
    """

    kind: str = "linear"
    eps: float = 1e-3
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_offset: float = 0.008

    def __post_init__(self) -> None:
        check_choice("schedule", self.kind, SCHEDULES)
        if not 0.0 < self.eps < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5), got {self.eps!r}")
        if not 0.0 <= self.beta_min < self.beta_max:
            raise ValueError(
                f"need 0 <= beta_min < beta_max, got beta_min={self.beta_min!r}, "
                f"beta_max={self.beta_max!r}"
            )
        check_positive("cosine_offset", self.cosine_offset)

    @property
    def s_max(self) -> float:
        """The diffusion time of the noise end t=0."""
        return 1.0 if self.kind == "linear" else COSINE_END

    def diffusion_time(self, t: Tensor) -> Tensor:
        """``s(t) = s_max - t (s_max - eps)``: s=eps at t=1 (data), s=s_max at t=0 (noise)."""
        return self.s_max - t * (self.s_max - self.eps)

    def log_alpha2_and_beta(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """``log alpha(s)^2`` and ``beta(s) = -d log alpha^2 / ds`` in diffusion time."""
        if self.kind == "linear":
            slope = self.beta_max - self.beta_min
            return -(self.beta_min * s + 0.5 * slope * s * s), self.beta_min + slope * s
        c = self.cosine_offset
        u = 0.5 * math.pi * (s + c) / (1 + c)
        log_f0 = 2 * math.log(math.cos(0.5 * math.pi * c / (1 + c)))
        return 2 * torch.log(torch.cos(u)) - log_f0, math.pi / (1 + c) * torch.tan(u)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(alpha, sigma, lambda')`` at genlab times ``t`` (any shape; the same shape each).

        ``sigma^2 = -expm1(log alpha^2)`` keeps its precision near the data end, and
        ``lambda' = d lambda / dt = beta(s) / sigma^2 * (s_max - eps) > 0``.
        """
        log_a2, beta = self.log_alpha2_and_beta(self.diffusion_time(t))
        sigma2 = -torch.expm1(log_a2)
        rate = beta / sigma2 * (self.s_max - self.eps)
        return torch.exp(0.5 * log_a2), torch.sqrt(sigma2), rate

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = log(alpha^2 / sigma^2)``, increasing in t (any shape)."""
        log_a2, _ = self.log_alpha2_and_beta(self.diffusion_time(t))
        return log_a2 - torch.log(-torch.expm1(log_a2))


class ProbabilityFlow(nn.Module):
    """The probability-flow velocity of a noise predictor: ``lambda' sigma / 2 (sigma x - e_hat)``.

    The noise predictor is ``e_hat(t, x) = sigma(t) x + network(c(t), x)``: the network learns
    the deviation from ``sigma x``, the exact predictor for N(0, I) data, so that
    ``v = -lambda' sigma / 2 * network(c(t), x)``. Its time input is the noise level,
    ``c = lambda / 8`` (about -1.3 to 1.2), not t: the linear schedule crowds the low noise
    levels, where the data's fine structure forms, into the last tenth of t. A zero network is
    the prior at every t (the flow starts as the identity), and the network's error is not
    amplified at the noise end, where ``x_hat = (x - sigma e_hat) / alpha`` divides by
    ``alpha(0) < 0.01``.

    Arguments:
        network: ``network(c, x) -> (B, dim)`` with ``forward_with_jacobian(c, x)`` (its exact
            Jacobian w.r.t. ``x``, (B, dim, dim)), a :class:`genlab.nn.TimeMLP`; ``c`` is the
            scaled log-SNR, 0-dim or (B,). A conditional network (``classes > 0``) is called
            as ``network(c, x, y)`` too, and every method here takes the classes ``y``
            (``None``: the null class).
        schedule: the path.
    """

    def __init__(self, network: nn.Module, schedule: VPSchedule) -> None:
        super().__init__()
        self.network = network
        self.schedule = schedule
        self.classes = getattr(network, "classes", 0)

    def _net(self, c: Tensor, x: Tensor, y: Tensor | None, jacobian: bool = False):
        fn = self.network.forward_with_jacobian if jacobian else self.network
        return fn(c, x) if y is None else fn(c, x, y)

    def _scales(self, t: Tensor | float, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The network's time input, and ``sigma`` and ``lambda' sigma / 2`` at ``t``, shaped
        (1 or B, 1) for ``t`` 0-dim or (B,).

        An adaptive solver may try a stage just past an end of [0, 1], where the schedule is
        undefined; there the field takes its value at the end (``t`` is clamped to [0, 1]),
        which leaves the solution on [0, 1] unchanged.
        """
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).clamp(0.0, 1.0)
        alpha, sigma, rate = self.schedule.coefficients(t.reshape(-1, 1))
        c = (torch.log(alpha / sigma) / LOG_SNR_SCALE).reshape(t.shape)
        return c, sigma, 0.5 * rate * sigma

    def noise(self, t: Tensor | float, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The predicted noise ``e_hat = sigma x + network(c, x)`` at ``t`` (float, 0-dim or
        (B,)) and points ``x`` (B, dim); (B, dim)."""
        c, sigma, _ = self._scales(t, x)
        return sigma * x + self._net(c, x, y)

    def forward(self, t: Tensor | float, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The velocity at time ``t`` (float, 0-dim or (B,)) and points ``x`` (B, dim); (B, dim)."""
        c, _, k = self._scales(t, x)
        return -k * self._net(c, x, y)

    def velocity_and_score(
        self, t: Tensor, x: Tensor, y: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The velocity and the score ``-e_hat / sigma`` at ``t``; one network evaluation."""
        c, sigma, k = self._scales(t, x)
        out = self._net(c, x, y)
        return -k * out, -x - out / sigma

    def forward_with_jacobian(
        self, t: Tensor | float, x: Tensor, y: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(v, J)``: the velocity (B, dim) and its Jacobian ``J[b, i, j] = dv_i/dx_j``
        (B, dim, dim), from the network's exact forward-mode Jacobian."""
        c, _, k = self._scales(t, x)
        out, jac = self._net(c, x, y, jacobian=True)
        return -k * out, -k[..., None] * jac


class Diffusion(ContinuousFlow):
    """A VP diffusion trained to predict noise; a continuous flow through its probability flow.

    Arguments:
        network: the noise predictor (see :class:`ProbabilityFlow`).
        schedule: the VP path (:class:`VPSchedule`).
        sampler, likelihood, dim, ema: see :class:`ContinuousFlow`; ``sampler.method`` is one
            of ``ancestral``, ``ddim``, ``sde`` or an ODE solver.
        classes, label_dropout: a conditional model's number of classes (the run sets it from
            the data, ``conditional=true``; the network must take them) and the share of
            training rows given the null class (see :class:`ContinuousFlow`). Every sampler
            then takes classes with classifier-free guidance on the predicted noise,
            ``e_w = e_null + (1 + w)(e_y - e_null)`` (``sampler.guidance`` is ``w``).

    The end-of-run yardstick scores ``ancestral``, ``ddim`` (eta=0), ``dpmpp`` (``dpmpp_2m``,
    steps uniform in log-SNR), ``heun`` (Karras' spacing, no churn; at half the step counts,
    since each of its steps takes two network evaluations) and the probability-flow ODE with Euler
    (``euler``) at each of ``quality_steps``.
    """

    name = "diffusion"
    methods = ("ancestral", "ddim", "dpmpp_2m", "heun", "sde", *SOLVERS)
    few_step_samplers = {
        "ancestral": {"method": "ancestral", "spacing": "uniform"},
        "ddim": {"method": "ddim", "eta": 0.0, "spacing": "uniform"},
        "dpmpp": {"method": "dpmpp_2m", "spacing": "logsnr"},  # digits would run into k
        "heun": {"method": "heun", "spacing": "karras", "churn": 0.0, "nfe_per_step": 2},
        "euler": {"method": "euler", "spacing": "uniform"},
    }
    quality_steps = (1, 2, 4, 10, 20, 100, 1000)

    def __init__(
        self,
        network: nn.Module,
        schedule: VPSchedule,
        sampler: Sampler | Solver,
        likelihood: Solver,
        ema: float = 0.999,
        dim: int = 2,
        classes: int = 0,
        label_dropout: float = 0.1,
    ) -> None:
        field = ProbabilityFlow(network, schedule)
        super().__init__(
            field, sampler, likelihood, dim, ema, classes=classes, label_dropout=label_dropout
        )
        self.schedule = schedule

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """DDPM's simple loss ``|e_hat(t, alpha x + sigma e) - e|^2`` on a data batch ``x``
        (B, dim), with ``t ~ U[0, 1]`` and ``e ~ N(0, I)``; the batch mean. A conditional
        model takes the batch's classes ``y`` and drops a ``label_dropout`` share of them to
        the null class."""
        check_points(x, self.dim)
        given = self._training_classes(y)
        t = torch.rand(len(x), device=x.device, dtype=x.dtype)
        noise = torch.randn_like(x)
        alpha, sigma, _ = self.schedule.coefficients(t[:, None])
        e_hat = self.velocity.noise(t, alpha * x + sigma * noise, given)
        return (e_hat - noise).square().sum(-1).mean()

    def velocity_and_score(
        self, t: Tensor, x: Tensor, field: nn.Module | None = None
    ) -> tuple[Tensor, Tensor]:
        """The probability-flow velocity and the score ``-e_hat / sigma`` at time ``t``, each
        (B, dim), of ``field`` (default :attr:`field`); one network evaluation (two rows a
        point when guided)."""
        self.counter.count += 1
        return (field or self.field).velocity_and_score(t, x)

    def _check_method(self, sampler: Sampler) -> Sampler:
        sampler = super()._check_method(sampler)
        if sampler.is_ode and sampler.spacing != "uniform":
            raise ValueError(
                f"spacing={sampler.spacing!r} applies to diffusion's own samplers (ancestral, "
                f"ddim, dpmpp_2m, heun, sde); the ODE solver {sampler.method!r} takes equal "
                "steps: use spacing=uniform"
            )
        return sampler

    def step_times(self, sampler: Sampler, x: Tensor) -> Tensor:
        """The ``sampler.steps + 1`` times of its grid (its ``spacing``), in ``x``'s dtype."""
        return step_times(
            sampler.spacing,
            sampler.steps,
            self.schedule.log_snr,
            sampler.rho,
            dtype=x.dtype,
            device=x.device,
        )

    def sample_with(
        self,
        z: Tensor,
        sampler: Sampler,
        generator: torch.Generator | None,
        field: nn.Module | None = None,
    ) -> Tensor:
        """``ancestral``, ``ddim``, ``dpmpp_2m``, ``heun`` or ``sde`` from noise ``z`` (B, dim)
        in ``sampler.steps`` steps placed by ``sampler.spacing``, on ``field`` (default
        :attr:`field`; given classes, the guided one)."""
        times = self.step_times(sampler, z)
        if sampler.method == "sde":

            def g2(t: Tensor) -> Tensor:
                _, sigma, rate = self.schedule.coefficients(t)
                return sampler.noise * sigma * sigma * rate

            return marginal_sde(
                lambda t, x: self.velocity_and_score(t, x, field),
                g2,
                z,
                sampler.steps,
                generator,
                times.double().cpu(),
            )
        if sampler.method == "dpmpp_2m":
            return self.dpmpp_2m(z, times, field)
        if sampler.method == "heun":
            return self.heun(z, times, sampler.churn, generator, field)
        eta = 1.0 if sampler.method == "ancestral" else sampler.eta
        return self.ddim(z, sampler.steps, eta, generator, times, field)

    def _predict(self, t: Tensor, x: Tensor, field: nn.Module | None = None) -> Tensor:
        """The noise ``field`` (default :attr:`field`) predicts at one time ``t`` (0-dim); one
        counted network evaluation."""
        self.counter.count += 1
        return (field or self.field).noise(t, x)

    def dpmpp_2m(self, x: Tensor, times: Tensor, field: nn.Module | None = None) -> Tensor:
        """DPM-Solver++(2M) from noise ``x`` (B, dim) at t=0 over the grid ``times``.

        With ``l = log(alpha / sigma)`` (half the log-SNR), ``h = l' - l`` and the data
        prediction ``x_hat = (x - sigma e_hat) / alpha``, the step from ``(alpha, sigma)`` to
        ``(alpha', sigma')`` is ``x' = sigma'/sigma x - alpha' expm1(-h) D``: ``D = x_hat`` on
        the first step (first order), then ``D = (1 + 1/(2r)) x_hat - 1/(2r) x_hat_prev`` with
        ``r = h_prev / h``, the second-order multistep correction (one network evaluation a
        step). Returns the samples at t=1.
        """
        alpha, sigma, _ = self.schedule.coefficients(times)
        half = torch.log(alpha / sigma)
        previous, h_prev = None, None
        for i in range(len(times) - 1):
            e_hat = self._predict(times[i], x, field)
            x_hat = (x - sigma[i] * e_hat) / alpha[i]
            h = half[i + 1] - half[i]
            d = x_hat
            if previous is not None:
                r = h_prev / h
                d = (1 + 0.5 / r) * x_hat - (0.5 / r) * previous
            x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * torch.expm1(-h) * d
            previous, h_prev = x_hat, h
        return x

    def heun(
        self,
        x: Tensor,
        times: Tensor,
        churn: float = 0.0,
        generator: torch.Generator | None = None,
        field: nn.Module | None = None,
    ) -> Tensor:
        """EDM's Heun sampler from noise ``x`` (B, dim) at t=0 over the grid ``times``.

        In ``x~ = x / alpha`` and ``sigma~ = sigma / alpha`` the probability-flow ODE is
        ``d x~ / d sigma~ = e_hat(t, alpha x~)``. Each step is Heun's (the trapezoid of the
        slopes at both ends; two network evaluations). With ``churn > 0`` a step first raises
        the noise level to ``sigma^ = sigma~ (1 + gamma)``, ``gamma = min(churn / steps,
        sqrt(2) - 1)``, by adding noise of variance ``sigma^2 - sigma~^2`` from ``generator``
        (Karras et al., Algorithm 2), and starts from the time of ``sigma^`` (no earlier than
        t=0). Returns the samples at t=1.
        """
        steps = len(times) - 1
        alpha, sigma, _ = self.schedule.coefficients(times)
        scaled = sigma / alpha
        y = x / alpha[0]
        gamma = min(churn / steps, math.sqrt(2) - 1)
        for i in range(steps):
            t, a, s = times[i], alpha[i], scaled[i]
            if gamma > 0:
                t = self.time_of_scaled_sigma(s * (1 + gamma)).to(times)
                a, s_hat, _ = self.schedule.coefficients(t)
                noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
                y = y + torch.sqrt(((s_hat / a) ** 2 - s * s).clamp(min=0)) * noise
                s = s_hat / a
            d = self._predict(t, a * y, field)
            ds = scaled[i + 1] - s
            y_next = y + ds * d
            d_next = self._predict(times[i + 1], alpha[i + 1] * y_next, field)
            y = y + ds * 0.5 * (d + d_next)
        return alpha[-1] * y

    def time_of_scaled_sigma(self, scaled: Tensor) -> Tensor:
        """The genlab time at which ``sigma / alpha`` equals ``scaled`` (0-dim), clamped to
        [0, 1]: where the log-SNR is ``-2 log(sigma / alpha)``."""
        return time_of_log_snr(self.schedule.log_snr, -2 * torch.log(scaled.double()))

    def ddim(
        self,
        x: Tensor,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        times: Tensor | None = None,
        field: nn.Module | None = None,
    ) -> Tensor:
        """DDIM's step from each time of a grid of [0, 1] to the next, from noise ``x``.

        From ``(a, s)`` to ``(a', s')`` (alpha and sigma, a < a'):
        ``x' = a' x_hat + sqrt(s'^2 - c^2) e_hat + c z`` with ``x_hat = (x - s e_hat) / a`` and
        ``c = eta * s'/s * sqrt(1 - a^2/a'^2)``; eta=1 is the posterior
        ``q(x_t' | x_t, x_hat)``, DDPM's ancestral step, and eta=0 draws no noise.

        ``times`` are the ``steps + 1`` grid times (:meth:`step_times`); ``None``: equal steps.

        Returns:
            The samples at t=1, (B, dim).
        """
        check_int("steps", steps, 1)
        if times is None:
            times = torch.linspace(0.0, 1.0, steps + 1, dtype=x.dtype, device=x.device)
        alpha, sigma, _ = self.schedule.coefficients(times)
        for i in range(steps):
            a, s, a1, s1 = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
            e_hat = self._predict(times[i], x, field)
            c = eta * s1 / s * torch.sqrt(1 - (a / a1) ** 2)
            x = a1 / a * x + (torch.sqrt((s1 * s1 - c * c).clamp(min=0)) - a1 * s / a) * e_hat
            if eta > 0:
                x = x + c * torch.randn(
                    x.shape, generator=generator, device=x.device, dtype=x.dtype
                )
        return x
