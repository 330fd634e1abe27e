"""Figures: samples, density against the truth, trajectories, density snapshots, quality vs steps
or NFE, and the flow animation (matplotlib's animation API, written as a GIF by its Pillow
writer).

Headless (Agg). Every 2D panel has equal aspect and axis labels; every figure is titled with
model, data and step. Every figure is laid out by constrained layout, sized so that its square
panels fill it, so no label is clipped and no margin is wasted. Functions take arrays (or a
model, through its public interface) and a path, write one PNG and return nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.animation import PillowWriter  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from genlab.files import atomic  # noqa: E402

__all__ = [
    "grid_points",
    "grid_log_density",
    "log_histogram",
    "plot_samples",
    "plot_density",
    "plot_trajectories",
    "plot_density_snapshots",
    "plot_guidance",
    "plot_quality_vs_steps",
    "FRAMES",
    "Panel",
    "resample",
    "animate_flow",
    "plot_quality_vs_nfe",
]

GRID = 200  # points per side of density grids
DENSITY_CHUNK = 1_000  # grid points per log_prob call (see grid_log_density)
RATIO_CLIP = 3.0  # |log(model/truth)| shown up to this many nats
NEGLIGIBLE = 1e-3  # density below this fraction of the truth's peak counts as no mass
NEGLIGIBLE_COLOR = "0.75"  # grey: where the ratio panel has nothing to show
TIME_CMAP = "plasma"  # colour of t along trajectories; noise and sample dots use its two ends
DPI = 110
FRAMES = 49  # frames of every flow animation (t = k/48): 4 s a loop at FPS
FPS = 12
GIF_DPI = 72  # coarser than the PNGs: a GIF stores every frame
FLOW_COLOR = "#ff2d2d"  # the moving points: red stands out on viridis and on grey alike


def grid_points(bound: float, n: int = GRID) -> torch.Tensor:
    """Cell centres of an n x n grid on [-bound, bound]^2, shape (n*n, 2), row-major in y."""
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * bound - bound
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1)


@torch.no_grad()
def grid_log_density(
    log_prob,
    bound: float,
    n: int = GRID,
    device="cpu",
    dtype=torch.float32,
    chunk: int = DENSITY_CHUNK,
):
    """``log_prob`` on the grid of :func:`grid_points`, as an (n, n) float64 numpy array.

    The grid goes to ``log_prob`` in bands of ``chunk`` points. An adaptive ODE solve steps as
    finely as its stiffest point needs, so in small bands only the bands that hold stiff points
    pay for them, at the same tolerance per point."""
    pts = grid_points(bound, n).to(device=device, dtype=dtype)
    out = torch.cat([log_prob(c).double().cpu() for c in pts.split(chunk)])
    return out.reshape(n, n).numpy()


def pool_log_density(log_q: np.ndarray, factor: int) -> np.ndarray:
    """An (n, n) log-density grid of :func:`grid_points` as the (n / factor)-a-side grid of
    the same square: each coarse cell holds the log of the mean density over the ``factor``
    x ``factor`` cells it covers (a log-mean-exp), so mass is kept and ``-inf`` stays empty."""
    n = log_q.shape[0]
    if factor == 1:
        return log_q
    if n % factor or log_q.shape != (n, n):
        raise ValueError(f"cannot pool a {log_q.shape} grid by {factor}")
    blocks = torch.from_numpy(np.ascontiguousarray(log_q)).reshape(
        n // factor, factor, n // factor, factor
    )
    pooled = torch.logsumexp(blocks.permute(0, 2, 1, 3).flatten(2), dim=2)
    return (pooled - 2 * math.log(factor)).numpy()


def log_histogram(samples: np.ndarray, bound: float, n: int) -> np.ndarray:
    """The log of the normalised histogram of ``samples`` (m, 2) on the n x n cells of
    :func:`grid_points` (rows in y), ``-inf`` in empty cells: what a model without a density
    shows in its place, an estimate from its samples and named as one."""
    edges = np.linspace(-bound, bound, n + 1)
    counts, _, _ = np.histogram2d(samples[:, 1], samples[:, 0], bins=(edges, edges))
    cell = (2 * bound / n) ** 2
    with np.errstate(divide="ignore"):
        return np.log(counts / (len(samples) * cell))


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


def _figure(ncols: int, panel: float, extra_width: float = 0.0, extra_height: float = 0.0):
    """A constrained-layout row of ``ncols`` axes for square panels about ``panel`` inches wide.

    The size leaves room for tick labels, axis labels, panel titles and the suptitle (and
    ``extra_width``/``extra_height`` inches for colour bars or captions), so equal-aspect
    panels fill the figure instead of floating in blank margins.
    """
    size = (ncols * (panel + 0.6) + 0.1 + extra_width, panel + 1.0 + extra_height)
    fig, axes = plt.subplots(1, ncols, figsize=size, squeeze=False, layout="constrained")
    return fig, axes[0]


def _save(fig: Figure, path) -> None:
    try:
        with atomic(path) as tmp:
            fig.savefig(tmp, dpi=DPI)
    finally:
        plt.close(fig)


def plot_samples(data: np.ndarray, samples: np.ndarray, bound: float, title: str, path) -> None:
    """Data and model samples side by side on the same axes."""
    fig, axes = _figure(2, panel=4.0)
    _scatter(axes[0], data, "0.2")
    _square(axes[0], bound, f"data ({len(data)})")
    _scatter(axes[1], samples, "tab:blue")
    _square(axes[1], bound, f"model samples ({len(samples)})")
    fig.suptitle(title)
    _save(fig, path)


def plot_density(log_truth: np.ndarray, log_model: np.ndarray, bound: float, title: str, path):
    """Truth | model | log(model/truth) on the same grid; the first two share one colour scale.

    The ratio panel is clipped to +-RATIO_CLIP nats: red where the model puts too much mass,
    blue where too little; where the truth is 0 (outside a support) it shows +RATIO_CLIP, and
    where both densities are below NEGLIGIBLE times the truth's peak it is masked in
    NEGLIGIBLE_COLOR (grey), which a caption under the panel explains.
    """
    p, q = np.exp(log_truth), np.exp(log_model)
    vmax = max(p.max(), 1e-12)
    extent = (-bound, bound, -bound, bound)
    with np.errstate(invalid="ignore"):
        ratio = np.clip(np.nan_to_num(log_model - log_truth, nan=0.0), -RATIO_CLIP, RATIO_CLIP)
    ratio[np.maximum(p, q) < NEGLIGIBLE * vmax] = np.nan  # neither has mass: nothing to show
    fig, axes = _figure(3, panel=3.6, extra_width=1.4, extra_height=0.1)
    for ax, img, name in ((axes[0], p, "truth"), (axes[1], q, "model")):
        im = ax.imshow(img, origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=vmax)
        _square(ax, bound, f"{name} density")
    fig.colorbar(im, ax=axes[1], shrink=0.8, label="density")  # shared by the first two
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad=NEGLIGIBLE_COLOR)
    im = axes[2].imshow(
        ratio, origin="lower", extent=extent, cmap=cmap, vmin=-RATIO_CLIP, vmax=RATIO_CLIP
    )
    _square(axes[2], bound, "log(model / truth)")
    axes[2].annotate(
        f"grey: both densities < {NEGLIGIBLE:g} × truth's peak",
        xy=(0.5, 0),
        xycoords=axes[2].xaxis.label,
        xytext=(0, -3),
        textcoords="offset points",
        ha="center",
        va="top",
        fontsize="small",
    )
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="nats")
    fig.suptitle(title)
    _save(fig, path)


def plot_trajectories(
    panels: Sequence[tuple[str, np.ndarray]],
    data: np.ndarray,
    bound: float,
    title: str,
    path,
    start: str = "noise",
) -> None:
    """Paths from noise (t=0, or the source ``start`` names) to data (t=1), one panel per
    ``(label, paths)``.

    ``paths`` has shape (T, n, 2) at equally spaced times from 0 to 1; segments are coloured
    by time with TIME_CMAP over a grey scatter of the data, and the end points are dots in the
    colour map's own colours for t=0 and t=1, edged so that they stand out from the paths.
    """
    cmap = plt.get_cmap(TIME_CMAP)
    fig, axes = _figure(len(panels), panel=4.2, extra_width=0.6)
    for ax, (label, paths) in zip(axes, panels, strict=True):
        _scatter(ax, data, "0.75")
        T = paths.shape[0]
        seg = np.stack([paths[:-1], paths[1:]], axis=2)  # (T-1, n, 2, 2)
        times = np.repeat(np.linspace(0, 1, T - 1), paths.shape[1])
        lc = LineCollection(seg.reshape(-1, 2, 2), cmap=cmap, linewidths=0.6, alpha=0.7)
        lc.set_array(times)
        lc.set_clim(0, 1)
        ax.add_collection(lc)
        for t, end, edge, name in ((0, paths[0], "white", start), (1, paths[-1], "k", "sample")):
            ax.scatter(
                *end.T,
                s=9,
                color=cmap(float(t)),
                edgecolors=edge,
                linewidths=0.4,
                label=f"t={t} ({name})",
                zorder=3,
            )
        _square(ax, bound, label)
    axes[0].legend(loc="upper left", fontsize=7, markerscale=2)
    # Shared by all panels; opaque, so that its ends are exactly the colours of the dots.
    fig.colorbar(ScalarMappable(lc.norm, cmap), ax=axes[-1], shrink=0.8, label="t")
    fig.suptitle(title)
    _save(fig, path)


def plot_density_snapshots(log_densities: Mapping[float, np.ndarray], bound: float, title, path):
    """The model's marginal density p_t at a few times t (keys), each on its own colour scale."""
    fig, axes = _figure(len(log_densities), panel=2.8)
    extent = (-bound, bound, -bound, bound)
    for ax, (t, logd) in zip(axes, log_densities.items(), strict=True):
        ax.imshow(np.exp(logd), origin="lower", extent=extent, cmap="viridis")
        _square(ax, bound, f"t = {t:g}")
    fig.suptitle(title)
    _save(fig, path)


def plot_guidance(
    log_truth: np.ndarray, samples: Mapping[float, Sequence[np.ndarray]], bound: float, title, path
) -> None:
    """What classifier-free guidance does: a row per guidance scale ``w`` (keys of
    ``samples``), a column per class, each panel the class's samples at that ``w`` over the
    truth's conditional density ``p(x | y)`` (``log_truth``, (classes, n, n), in grey)."""
    rows, cols = len(samples), len(log_truth)
    panel = 1.9
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(cols * (panel + 0.25) + 0.4, rows * (panel + 0.35) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    extent = (-bound, bound, -bound, bound)
    for i, (w, per_class) in enumerate(samples.items()):
        for k, (ax, xs) in enumerate(zip(axes[i], per_class, strict=True)):
            ax.imshow(np.exp(log_truth[k]), origin="lower", extent=extent, cmap="Greys")
            ax.scatter(*xs.T, s=1.5, alpha=0.5, color="tab:orange", linewidths=0, rasterized=True)
            ax.set_xlim(-bound, bound)
            ax.set_ylim(-bound, bound)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"class {k}", fontsize=9)
            if k == 0:
                ax.set_ylabel(f"w = {w:g}", fontsize=9)
    fig.suptitle(title)
    _save(fig, path)


#: Data sets per row of the W2-against-NFE figure.
PANELS_PER_ROW = 3

#: The quality axes show W2 up to this many times the floor; a curve's points above (a sampler
#: at 1-2 steps, far from the data) are drawn at the top edge, so that the curves near the
#: data keep their resolution.
W2_CEILING = 12.0


def _quality_axes(
    ax,
    curves: Mapping[str, Mapping[int, float]],
    floor: float,
    xlabel: str,
    legend: bool = True,
    colors: Mapping[str, object] | None = None,
) -> None:
    """W2 curves on log-log axes whose x ticks are the counts drawn, labelled as integers
    (a seconds axis, ``xlabel`` naming seconds, keeps matplotlib's own ticks). W2 is clipped
    at :data:`W2_CEILING` times the floor; ``colors`` fixes each label's colour."""
    top = W2_CEILING * floor
    values = [w for curve in curves.values() for w in curve.values()]
    for label, curve in curves.items():
        xs = sorted(curve)
        ys = [min(curve[x], top) for x in xs]
        color = None if colors is None else colors.get(label)
        ax.plot(xs, ys, marker="o", markersize=4, label=label, color=color)
    ax.axhline(floor, color="0.4", linestyle="--", label="W2 floor (data vs data)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if values and max(values) > top:
        ax.set_ylim(top=top * 1.05)
    if "seconds" not in xlabel:
        ticks = sorted({x for curve in curves.values() for x in curve})
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FixedFormatter([f"{x:g}" for x in ticks]))
        ax.xaxis.set_minor_locator(NullLocator())
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.2, not 2 x 10^-1
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    # minor labels only on a short range, where there is room for them
    ax.yaxis.set_minor_formatter(plain if high / low < 30 else FuncFormatter(lambda v, _: ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("W2 to data")
    ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(fontsize="small")


def plot_quality_vs_steps(
    curves: Mapping[str, Mapping[int, float]], floor: float, title: str, path
) -> None:
    """W2 against the number of sampling steps, one curve per label (a sampler, or a stage of
    a multi-stage model), with the data's own W2 floor."""
    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    _quality_axes(ax, curves, floor, "sampling steps")
    ax.set_title(title)
    _save(fig, path)


def plot_quality_vs_nfe(
    panels: Mapping[str, tuple[Mapping[str, Mapping[int, float]], float]],
    title: str,
    path,
    timed: Mapping[str, Mapping[str, Mapping[float, float]]] | None = None,
    points: int | None = None,
) -> None:
    """W2 against velocity evaluations per sample (NFE), one panel per data set; with
    ``timed``, a second row of W2 against the seconds of the draw (the frontier in wall-clock
    time, the same colours for the same curves).

    Arguments:
        panels: ``{data: (curves, floor)}`` with ``curves`` as ``{label: {nfe: W2}}``.
        timed: ``{data: {label: {seconds: W2}}}``.
        points: the samples each timed draw made, for the axis label.
    """
    cols = min(len(panels), PANELS_PER_ROW)
    per_kind = -(-len(panels) // cols)  # rows of NFE panels (and as many of time panels)
    rows = per_kind * (2 if timed else 1)
    size = (cols * 5.2 + 0.1, rows * 4.6 + 1.4)
    fig, grid = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")
    labels = list(dict.fromkeys(label for curves, _ in panels.values() for label in curves))
    palette = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors
    colors = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    for ax in grid.flat:
        ax.set_visible(False)
    for j, (data, (curves, floor)) in enumerate(panels.items()):
        row, col = divmod(j, cols)
        ax = grid[row, col]
        ax.set_visible(True)
        _quality_axes(ax, curves, floor, "NFE (network evaluations per sample)", False, colors)
        ax.set_title(data)
        if timed:
            ax = grid[per_kind + row, col]
            ax.set_visible(True)
            shown = {label: timed.get(data, {}).get(label, {}) for label in curves}
            what = f"{points:,} samples" if points else "the draw"
            _quality_axes(ax, shown, floor, f"seconds to draw {what}", False, colors)
            ax.set_title(f"{data}: against time")
    handles = [plt.Line2D([], [], color=colors[label], marker="o") for label in labels]
    handles.append(plt.Line2D([], [], color="0.4", linestyle="--"))
    names = [*labels, "W2 floor (data vs data)"]
    fig.legend(handles, names, loc="outside lower center", ncols=3, fontsize="small")
    fig.suptitle(title)
    _save(fig, path)


@dataclass(frozen=True)
class Panel:
    """One panel of a flow animation.

    Attributes:
        label: the panel's title.
        points: (frames, n, 2) the positions of the same n points at every frame.
        log_density: (frames, g, g) the log-density behind the points at every frame, on the
            grid of :func:`grid_points` (``bound``, g); ``None`` shows the data in grey instead.
    """

    label: str
    points: np.ndarray
    log_density: np.ndarray | None = None


def resample(states: np.ndarray, frames: int = FRAMES) -> np.ndarray:
    """Linear interpolation of (K, ...) states, K >= 2 equally spaced along a path, to
    ``frames`` equally spaced positions; returns (frames, ...), the ends unchanged."""
    pos = np.linspace(0, len(states) - 1, frames)
    lo = np.minimum(pos.astype(int), len(states) - 2)
    w = (pos - lo).reshape(-1, *[1] * (states.ndim - 1))
    return (1 - w) * states[lo] + w * states[lo + 1]


def animate_flow(
    panels: Sequence[Panel], captions: Sequence[str], data: np.ndarray, bound: float, title, path
) -> None:
    """Points carried from noise to data, one panel per :class:`Panel`, one frame per caption.

    Every panel shows its points at the frame (FLOW_COLOR) with their tracks so far, over the
    panel's density at that frame (each frame on its own colour scale) or the data in grey. The
    caption (``t = 0.50``, ``layer 3 of 17``) is printed in each panel. The layout is fixed
    after the first frame, so nothing moves but the points. Writes a GIF at FPS frames a second
    through matplotlib's Pillow writer.
    """
    fig, axes = _figure(len(panels), panel=3.4)
    extent = (-bound, bound, -bound, bound)
    drawn = []
    for ax, panel in zip(axes, panels, strict=True):
        image = None
        if panel.log_density is None:
            _scatter(ax, data, "0.6")
        else:
            image = ax.imshow(
                np.exp(panel.log_density[0]),
                origin="lower",
                extent=extent,
                cmap="viridis",
                interpolation="bilinear",
            )
        track_color = "0.3" if image is None else "white"
        tracks = LineCollection([], colors=track_color, linewidths=0.4, alpha=0.35)
        ax.add_collection(tracks)
        dots = ax.scatter(*panel.points[0].T, s=7, color=FLOW_COLOR, linewidths=0, zorder=3)
        box = {"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "linewidth": 0}
        caption = ax.text(0.03, 0.97, "", transform=ax.transAxes, va="top", bbox=box)
        _square(ax, bound, panel.label)
        drawn.append((panel, image, tracks, dots, caption))
    fig.suptitle(title)
    fig.canvas.draw()
    fig.set_layout_engine("none")  # keep the first frame's layout: only the points move
    writer = PillowWriter(fps=FPS)
    with atomic(path) as tmp, writer.saving(fig, tmp, dpi=GIF_DPI):
        for f, text in enumerate(captions):
            for panel, image, tracks, dots, caption in drawn:
                if image is not None:
                    density = np.exp(panel.log_density[f])
                    image.set_data(density)
                    image.set_clim(0, max(density.max(), 1e-12))
                tracks.set_segments(panel.points[: f + 1].transpose(1, 0, 2))
                dots.set_offsets(panel.points[f])
                caption.set_text(text)
            writer.grab_frame()
    plt.close(fig)
