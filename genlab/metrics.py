"""One exact yardstick for every model.

- KL to the truth: ``KL(p || q) = mean(log p(x) - log q(x))`` over fresh data samples, with its
  standard error; it equals the test NLL minus the test set's entropy estimate.
- W2: the exact 2-Wasserstein distance (POT's network-simplex ``ot.emd2`` on squared
  Euclidean costs, then a square root) between model and data samples, beside ``w2_floor``,
  the same distance between two independent data draws of the same size.
- Cost: sampling seconds, NFE per sample (velocity evaluations of the batched solve), peak
  memory.

The models are used only through ``log_prob``, ``sample`` and ``nfe``.
"""

from __future__ import annotations

import math
import resource
import sys
import time

import numpy as np
import ot
import torch
from torch import Tensor

from genlab.models.base import Model

__all__ = ["kl_to_truth", "wasserstein2", "sampling_cost", "peak_memory_mb", "evaluate"]


@torch.no_grad()
def batched_log_prob(model: Model, x: Tensor, chunk: int = 10_000) -> Tensor:
    """``model.log_prob`` over ``x`` in chunks (bounded memory); returns (B,) float64."""
    return torch.cat([model.log_prob(c).double() for c in x.split(chunk)])


def kl_to_truth(model: Model, toy, n: int = 20_000, generator=None) -> dict[str, float]:
    """KL(p || q) of the model ``q`` to the data ``p`` on ``n`` fresh data samples.

    Returns:
        ``nll`` (mean ``-log q``), ``test_entropy`` (mean ``-log p``, a Monte Carlo estimate of
        the entropy), ``kl = nll - test_entropy = mean(log p - log q)`` and ``kl_se``, the
        standard error of that mean (the difference has far less variance than either term).
    """
    device = model.device
    x = toy.sample(n, generator).to(device)
    log_q = batched_log_prob(model, x).cpu()
    log_p = toy.log_prob(x.double()).cpu()
    diff = log_p - log_q
    return {
        "nll": -log_q.mean().item(),
        "test_entropy": -log_p.mean().item(),
        "kl": diff.mean().item(),
        "kl_se": (diff.std() / math.sqrt(n)).item(),
    }


def wasserstein2(x: Tensor, y: Tensor) -> float:
    """Exact W2 between the empirical measures of ``x`` (n, d) and ``y`` (m, d), uniform weights."""
    a = x.detach().double().cpu().numpy()
    b = y.detach().double().cpu().numpy()
    cost = ot.dist(a, b, metric="sqeuclidean")
    w = np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b))
    return math.sqrt(max(ot.emd2(*w, cost, numItermax=10_000_000), 0.0))


def sampling_cost(model: Model, n: int = 10_000, generator=None, **sample_kwargs) -> dict:
    """Seconds to draw ``n`` samples (after a small warm-up) and NFE per sample."""
    with torch.no_grad():
        model.sample(min(n, 256), generator, **sample_kwargs)  # warm-up
        _sync(model.device)
        nfe0 = model.nfe
        start = time.perf_counter()
        model.sample(n, generator, **sample_kwargs)
        _sync(model.device)
        seconds = time.perf_counter() - start
    out = {"sample_seconds": seconds}
    if nfe0 is not None:
        out["nfe"] = model.nfe - nfe0
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


def evaluate(
    model: Model, toy, *, seed: int, n_test: int = 20_000, n_w2: int = 2_000, n_timing: int = 10_000
) -> dict[str, float]:
    """The whole yardstick for one model; every random draw comes from ``seed``.

    Returns a flat dict: ``nll, test_entropy, entropy, kl, kl_se, w2, w2_floor,
    sample_seconds`` and, for ODE models, ``nfe``.
    """
    model.eval()
    device = model.device
    gen = torch.Generator(device).manual_seed(seed)
    out = kl_to_truth(model, toy, n_test, gen)
    out["entropy"] = toy.entropy()
    with torch.no_grad():
        samples = model.sample(n_w2, gen)
    out["w2"] = wasserstein2(samples, toy.sample(n_w2, gen))
    out["w2_floor"] = wasserstein2(toy.sample(n_w2, gen), toy.sample(n_w2, gen))
    out.update(sampling_cost(model, n_timing, gen))
    return out
