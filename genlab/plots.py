"""Figures: samples, density against the truth, trajectories, density snapshots, quality vs steps.

Headless (Agg). Every 2D panel has equal aspect and axis labels; every figure is titled with
model, data and step. Functions take arrays (or a model, through its public interface) and a
path, write one PNG and return nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

__all__ = [
    "grid_points",
    "grid_log_density",
    "plot_samples",
    "plot_density",
    "plot_trajectories",
    "plot_density_snapshots",
    "plot_quality_vs_steps",
]

GRID = 200  # points per side of density grids
RATIO_CLIP = 3.0  # |log(model/truth)| shown up to this many nats
NEGLIGIBLE = 1e-3  # density below this fraction of the truth's peak counts as no mass


def grid_points(bound: float, n: int = GRID) -> torch.Tensor:
    """Cell centres of an n x n grid on [-bound, bound]^2, shape (n*n, 2), row-major in y."""
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * bound - bound
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1)


@torch.no_grad()
def grid_log_density(log_prob, bound: float, n: int = GRID, device="cpu", dtype=torch.float32):
    """``log_prob`` on the grid of :func:`grid_points`, as an (n, n) float64 numpy array."""
    pts = grid_points(bound, n).to(device=device, dtype=dtype)
    out = torch.cat([log_prob(c).double().cpu() for c in pts.split(10_000)])
    return out.reshape(n, n).numpy()


def _square(ax, bound: float, title: str | None = None) -> None:
    ax.set_xlim(-bound, bound)
    ax.set_ylim(-bound, bound)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)


def _scatter(ax, x: np.ndarray, color: str) -> None:
    ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.35, color=color, linewidths=0, rasterized=True)


def plot_samples(data: np.ndarray, samples: np.ndarray, bound: float, title: str, path) -> None:
    """Data and model samples side by side on the same axes."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), sharex=True, sharey=True)
    _scatter(axes[0], data, "0.2")
    _square(axes[0], bound, f"data ({len(data)})")
    _scatter(axes[1], samples, "tab:blue")
    _square(axes[1], bound, f"model samples ({len(samples)})")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_density(log_truth: np.ndarray, log_model: np.ndarray, bound: float, title: str, path):
    """Truth | model | log(model/truth) on the same grid; the first two share one colour scale.

    The ratio panel is clipped to +-RATIO_CLIP nats: red where the model puts too much mass,
    blue where too little; where the truth is 0 (outside a support) it shows +RATIO_CLIP, and
    where both densities are below NEGLIGIBLE times the truth's peak it shows 0 (white).
    """
    p, q = np.exp(log_truth), np.exp(log_model)
    vmax = max(p.max(), 1e-12)
    extent = (-bound, bound, -bound, bound)
    with np.errstate(invalid="ignore"):
        ratio = np.clip(np.nan_to_num(log_model - log_truth, nan=0.0), -RATIO_CLIP, RATIO_CLIP)
    ratio[np.maximum(p, q) < NEGLIGIBLE * vmax] = 0.0  # neither has mass here: nothing to show
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    for ax, img, name in ((axes[0], p, "truth"), (axes[1], q, "model")):
        im = ax.imshow(img, origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=vmax)
        _square(ax, bound, f"{name} density")
    fig.colorbar(im, ax=axes[:2].tolist(), shrink=0.8, label="density")
    im = axes[2].imshow(
        ratio, origin="lower", extent=extent, cmap="RdBu_r", vmin=-RATIO_CLIP, vmax=RATIO_CLIP
    )
    _square(axes[2], bound, "log(model / truth)")
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="nats")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectories(
    panels: Sequence[tuple[str, np.ndarray]], data: np.ndarray, bound: float, title: str, path
) -> None:
    """Paths from noise (t=0) to data (t=1), one panel per ``(label, paths)``.

    ``paths`` has shape (T, n, 2) at equally spaced times from 0 to 1; segments are coloured
    by time over a grey scatter of the data.
    """
    k = len(panels)
    fig, axes = plt.subplots(1, k, figsize=(4.8 * k + 0.8, 4.8), squeeze=False)
    for ax, (label, paths) in zip(axes[0], panels, strict=True):
        _scatter(ax, data, "0.75")
        T = paths.shape[0]
        seg = np.stack([paths[:-1], paths[1:]], axis=2)  # (T-1, n, 2, 2)
        times = np.repeat(np.linspace(0, 1, T - 1), paths.shape[1])
        lc = LineCollection(seg.reshape(-1, 2, 2), cmap="plasma", linewidths=0.6, alpha=0.7)
        lc.set_array(times)
        ax.add_collection(lc)
        ax.scatter(*paths[0].T, s=2, color="tab:blue", label="t=0 (noise)", zorder=3)
        ax.scatter(*paths[-1].T, s=2, color="tab:red", label="t=1 (sample)", zorder=3)
        _square(ax, bound, label)
    axes[0, 0].legend(loc="upper left", fontsize=7, markerscale=3)
    fig.colorbar(lc, ax=axes[0].tolist(), shrink=0.8, label="t")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_density_snapshots(log_densities: Mapping[float, np.ndarray], bound: float, title, path):
    """The model's marginal density p_t at a few times t (keys), each on its own colour scale."""
    k = len(log_densities)
    fig, axes = plt.subplots(1, k, figsize=(3.4 * k, 3.6), squeeze=False)
    extent = (-bound, bound, -bound, bound)
    for ax, (t, logd) in zip(axes[0], log_densities.items(), strict=True):
        ax.imshow(np.exp(logd), origin="lower", extent=extent, cmap="viridis")
        _square(ax, bound, f"t = {t:g}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_quality_vs_steps(
    curves: Mapping[str, Mapping[int, float]], floor: float, title: str, path
) -> None:
    """W2 against the number of Euler steps, one curve per label (e.g. reflow round)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, curve in curves.items():
        steps = sorted(curve)
        ax.plot(steps, [curve[s] for s in steps], marker="o", label=label)
    ax.axhline(floor, color="0.4", linestyle="--", label="W2 floor (data vs data)")
    ax.set_xscale("log")
    ax.set_xlabel("Euler steps")
    ax.set_ylabel("W2 to data")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
