"""One exact yardstick for every model.

- KL to the truth: ``KL(p || q) = mean(log p(x) - log q(x))`` over fresh data samples, with its
  standard error; it equals the test NLL minus the test set's entropy estimate.
- W2: the exact 2-Wasserstein distance (POT's network-simplex ``ot.emd2`` on squared
  Euclidean costs, then a square root) between model and data samples, beside ``w2_floor``,
  the same distance between two independent data draws of the same size.
- The floor: a model whose Jacobian determinant is constant (NICE) cannot get below a
  per-data-set KL, which each toy states (``constant_log_det_floor``); it is reported beside
  the model's KL as ``nice_floor``.
- The truth's cross-entropy of the samples: ``E_{x~q}[-log p(x)]`` over model samples,
  exact because every toy's ``log p`` is; it is never below the truth's entropy by more than
  noise when ``q = p``, and it punishes samples that land off the data. A toy whose density
  is zero somewhere (the checkerboard) gives it as infinite when any sample lands there, and
  ``off_support`` says which fraction did. It needs no density of the model, so it ranks
  one-step generators beside the flows.
- Quality against steps: W2 after k steps of each few-step sampler of a model, beside the
  network evaluations (NFE) per sample and the seconds that those k steps cost.
- Cost: sampling seconds, NFE per sample (velocity evaluations of the batched solve), peak
  memory.

The models are used only through ``log_prob``, ``sample``, ``nfe`` and the capabilities of
:mod:`genlab.models.base`.
"""

from __future__ import annotations

import math
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch import Tensor

from genlab.checks import check_int
from genlab.models.base import Model, Stage
from genlab.scores import QualityScore, flatten

__all__ = [
    "QUALITY_STEPS",
    "GUIDANCE_SCALES",
    "conditional_scores",
    "kl_to_truth",
    "cross_entropy",
    "kl_floor",
    "wasserstein2",
    "quality_vs_steps",
    "stage_report",
    "sampling_cost",
    "peak_memory_mb",
    "machine",
    "evaluate",
]

#: Step counts at which few-step samplers are scored.
QUALITY_STEPS = (1, 2, 4, 10, 100)


@torch.no_grad()
def batched_log_prob(log_prob, x: Tensor, chunk: int = 10_000, y: Tensor | None = None) -> Tensor:
    """``log_prob`` (a model's or a toy's) over ``x`` in chunks, for bounded memory: an ODE
    solve, or a curve toy's quadrature, holds kilobytes a point; ``y``: the points' classes,
    passed chunk by chunk as ``log_prob(x, y=...)``. Returns (B,) float64 on the CPU."""
    if y is None:
        return torch.cat([log_prob(c).double().cpu() for c in x.split(chunk)])
    pieces = zip(x.split(chunk), y.split(chunk), strict=True)
    return torch.cat([log_prob(a, y=b).double().cpu() for a, b in pieces])


def kl_to_truth(model: Model, toy, n: int = 20_000, generator=None) -> dict[str, float]:
    """KL(p || q) of the model ``q`` to the data ``p`` on ``n`` fresh data samples.

    Returns:
        ``nll`` (mean ``-log q``), ``test_entropy`` (mean ``-log p``, a Monte Carlo estimate of
        the entropy), ``kl = nll - test_entropy = mean(log p - log q)`` and ``kl_se``, the
        standard error of that mean (the difference has far less variance than either term).
    """
    device = model.device
    x = toy.sample(n, generator).to(device)
    log_q = batched_log_prob(model.log_prob, x)
    log_p = batched_log_prob(toy.log_prob, x.double())
    diff = log_p - log_q
    return {
        "nll": -log_q.mean().item(),
        "test_entropy": -log_p.mean().item(),
        "kl": diff.mean().item(),
        "kl_se": (diff.std() / math.sqrt(n)).item(),
    }


def test_entropy(toy, n: int = 20_000, generator=None) -> dict[str, float]:
    """``test_entropy``, the mean ``-log p`` of ``n`` fresh data points: what
    :func:`kl_to_truth` draws and reports beside the KL, for a model without a density."""
    x = toy.sample(n, generator)
    return {"test_entropy": -batched_log_prob(toy.log_prob, x.double()).mean().item()}


@torch.no_grad()
def cross_entropy(model: Model, toy, n: int = 20_000, generator=None) -> dict[str, float]:
    """The truth's cross-entropy of ``n`` model samples, ``mean(-log p(x))``, ``x ~ q``.

    Returns:
        ``off_support``, the fraction of samples where the truth's density is zero; when none
        is, ``cross_entropy`` and ``cross_entropy_se`` (the standard error of that mean). With
        samples off the support the cross-entropy is infinite and is not given: JSON has no
        infinity, and no finite number would be right.
    """
    log_p = batched_log_prob(toy.log_prob, model.sample(n, generator).double())
    off = ~torch.isfinite(log_p)
    out = {"off_support": off.double().mean().item()}
    if not off.any():
        out["cross_entropy"] = -log_p.mean().item()
        out["cross_entropy_se"] = (log_p.std() / math.sqrt(n)).item()
    return out


#: The classifier-free guidance scales at which a conditional model's samples are scored.
GUIDANCE_SCALES = (0, 1, 3)


@torch.no_grad()
def conditional_scores(model: Model, toy, n: int = 20_000, generator=None) -> dict[str, float]:
    """A conditional model against the truth's exact conditional densities, on ``n`` labelled
    data points and ``n`` samples at each guidance scale.

    Returns:
        ``class_kl`` and ``class_kl_se``: ``E_y KL(p(.|y) || q(.|y))``, the mean of
        ``log p(x|y) - log q(x|y)`` over labelled test points, with its standard error;
        ``class_kl_<k>``: each class's own KL; ``class_test_entropy``: the mean
        ``-log p(x|y)``, a Monte Carlo estimate of ``H(X|Y)``; and for each ``w`` of
        :data:`GUIDANCE_SCALES`, the truth's conditional cross-entropy of samples guided at
        ``w`` (classes drawn as the data's), ``guided_ce_w<w>`` = ``mean -log p(x|y)``, or,
        where some land off their class's support, only ``guided_off_w<w>``, their share.
        Guided samples have no density that the truth defines a KL to; their cross-entropy
        falls below ``H(X|Y)`` as guidance concentrates them where ``p(x|y)`` is high.
    """
    device = model.device
    x, y = toy.sample_labelled(n, generator)
    x, y = x.to(device), y.to(device)
    log_q = batched_log_prob(model.log_prob, x, y=y)
    log_p = toy.log_prob(x.double(), y).cpu()
    diff, y = log_p - log_q, y.cpu()
    out = {
        "class_kl": diff.mean().item(),
        "class_kl_se": (diff.std() / math.sqrt(n)).item(),
        "class_test_entropy": -log_p.mean().item(),
    }
    for k in range(toy.classes):
        out[f"class_kl_{k}"] = diff[y == k].mean().item()
    _, labels = toy.sample_labelled(n, generator)
    for w in GUIDANCE_SCALES:
        xs = model.sample(n, generator, y=labels.to(device), guidance=float(w))
        log_p = toy.log_prob(xs.double(), labels.to(xs.device)).cpu()
        off = ~torch.isfinite(log_p)
        if off.any():
            out[f"guided_off_w{w}"] = off.double().mean().item()
        else:
            out[f"guided_ce_w{w}"] = -log_p.mean().item()
    return out


def wasserstein2(x: Tensor, y: Tensor) -> float:
    """Exact W2 between the empirical measures of ``x`` (n, d) and ``y`` (m, d), uniform weights."""
    import ot  # here, not at the top: POT imports scikit-learn, two seconds of every start

    a = x.detach().double().cpu().numpy()
    b = y.detach().double().cpu().numpy()
    cost = ot.dist(a, b, metric="sqeuclidean")
    w = np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b))
    return math.sqrt(max(ot.emd2(*w, cost, numItermax=10_000_000), 0.0))


def kl_floor(model: Model, toy) -> dict[str, float]:
    """``{"nice_floor": f}`` for a constant-Jacobian model on a toy that states its floor
    (``toy.constant_log_det_floor``), else ``{}``: the floor is a fact about the data and the
    model family."""
    floor = getattr(toy, "constant_log_det_floor", None)  # a plug-in toy may not subclass Toy
    if model.constant_log_det and floor is not None:
        return {"nice_floor": floor}
    return {}


def sampler_steps(steps: tuple[int, ...], per_step: int = 1) -> list[int]:
    """The step counts at which a sampler of ``per_step`` network evaluations a step is
    scored: ``k // per_step`` for each ``k`` of ``steps`` (at least 1, each once), so that
    every sampler is scored at about the same NFE (Heun's 5 steps beside DDIM's 10)."""
    return list(dict.fromkeys(max(1, k // per_step) for k in steps))


@torch.no_grad()
def quality_vs_steps(
    model: Model,
    toy,
    generator=None,
    n: int = 2_000,
    steps: tuple[int, ...] = QUALITY_STEPS,
    stage: int | None = None,
) -> list[QualityScore]:
    """W2 to ``n`` fresh data points after ``k`` steps of each few-step sampler of ``model``,
    and what those steps cost.

    Returns:
        One :class:`genlab.scores.QualityScore` for every sampler in
        ``model.few_step_samplers`` and every ``k`` in ``steps`` (``k // n`` for a sampler whose
        entry sets ``nfe_per_step: n``, see :func:`sampler_steps`), with the model's velocity
        (or network) evaluations per sample, counted, not assumed (``k`` for Euler, ``4k``
        for rk4; ``None`` when ``model.nfe`` is ``None``), and the seconds the draw of ``n``
        samples took, labelled with ``stage``. Empty for a model without few-step samplers.

    Every sampler at every step count starts from the same state of ``generator`` (the same
    noise), so differences along a curve are the sampler's, not those of another draw.
    """
    if not model.few_step_samplers:
        return []
    data = toy.sample(n, generator).to(model.device)
    start = None if generator is None else generator.get_state()
    out = []
    for name, keywords in model.few_step_samplers.items():
        keywords = dict(keywords)
        per_step = keywords.pop("nfe_per_step", 1)
        for k in sampler_steps(steps, per_step):
            if start is not None:  # common random numbers: the curves show the steps, not draws
                generator.set_state(start)
            nfe0 = model.nfe
            start_time = time.perf_counter()
            xs = model.sample(n, generator, steps=k, **keywords)
            _sync(model.device)
            seconds = time.perf_counter() - start_time
            nfe = None if nfe0 is None else model.nfe - nfe0
            out.append(QualityScore(name, k, wasserstein2(xs, data), nfe, stage, seconds))
    return out


def stage_report(
    model: Model, stage: Stage, toy, generator, n: int, data: tuple[Tensor, ...] | None
) -> dict[str, float]:
    """What a multi-stage model is worth at the end of one stage: the stage's own diagnostics
    (e.g. the rectified flow's straightness) and the quality of its few-step samplers, as
    flat entries (:func:`genlab.scores.flatten`)."""
    out = stage.report(generator, n, data) if stage.report is not None else {}
    out.update(flatten(quality_vs_steps(model, toy, generator, n)))
    return out


def sampling_cost(
    model: Model, n: int = 10_000, generator=None, repeats: int = 3, **sample_kwargs
) -> dict:
    """Seconds to draw ``n`` samples, the median of ``repeats`` timed draws after a small
    warm-up (one draw of a fraction of a second is at the mercy of the machine), and the NFE
    per sample of the first timed draw. ``generator`` is left as one timed draw leaves it, so
    what is drawn from it afterwards does not depend on ``repeats``."""
    check_int("repeats", repeats, 1)
    seconds, nfe, after_one = [], None, None
    with torch.no_grad():
        model.sample(min(n, 256), generator, **sample_kwargs)  # warm-up
        _sync(model.device)
        for _ in range(repeats):
            nfe0 = model.nfe
            start = time.perf_counter()
            model.sample(n, generator, **sample_kwargs)
            _sync(model.device)
            seconds.append(time.perf_counter() - start)
            if nfe is None and nfe0 is not None:
                # per sample: a draw of more than a chunk solves each chunk in turn
                nfe = round((model.nfe - nfe0) / math.ceil(n / getattr(model, "chunk", n)))
            if after_one is None and generator is not None:
                after_one = generator.get_state()
    if after_one is not None:
        generator.set_state(after_one)
    out = {"sample_seconds": statistics.median(seconds)}
    if nfe is not None:
        out["nfe"] = nfe
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, else the peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def machine(device: torch.device) -> str:
    """What the run trained on, for reading its seconds: the GPU's name, or the CPU's model
    name with the torch threads in use (as ``/proc/cpuinfo`` gives it; else the platform's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"{name}, {threads} thread{'' if threads == 1 else 's'}"


def evaluate(
    model: Model, toy, *, seed: int, n_test: int = 20_000, n_w2: int = 2_000, n_timing: int = 10_000
) -> dict[str, float]:
    """The whole yardstick for one model; every random draw comes from ``seed``.

    Returns a flat dict: ``nll, test_entropy, entropy, kl, kl_se, w2, w2_floor,
    sample_seconds``, for ODE models ``nfe``, for constant-Jacobian models ``nice_floor``, for
    a model with ``quality_steps`` the ``w2_<sampler><k>``, ``nfe_<sampler><k>`` and
    ``sec_<sampler><k>`` of :func:`quality_vs_steps` at those steps, and the truth's
    cross-entropy of ``n_test`` samples (:func:`cross_entropy`), and for a conditional model
    the scores of :func:`conditional_scores`. Those are drawn last, in that order, so the
    other figures do not depend on them. A model without a density
    (``has_density`` false) has no ``nll``, ``kl`` or ``kl_se``.
    """
    model.eval()
    device = model.device
    gen = torch.Generator(device).manual_seed(seed)
    if model.has_density:
        out = kl_to_truth(model, toy, n_test, gen)
    else:
        out = test_entropy(toy, n_test, gen)
    out["entropy"] = toy.entropy()
    with torch.no_grad():
        samples = model.sample(n_w2, gen)
    out["w2"] = wasserstein2(samples, toy.sample(n_w2, gen))
    out["w2_floor"] = wasserstein2(toy.sample(n_w2, gen), toy.sample(n_w2, gen))
    out.update(sampling_cost(model, n_timing, gen))
    out.update(kl_floor(model, toy))
    if model.quality_steps:
        out.update(flatten(quality_vs_steps(model, toy, gen, n_w2, model.quality_steps)))
        out["n_w2"] = n_w2  # the samples of each timed draw of the scores
    out.update(cross_entropy(model, toy, n_test, gen))
    if getattr(model, "classes", 0):  # a conditional model (a plug-in may not say)
        out.update(conditional_scores(model, toy, n_test, gen))
    return out
