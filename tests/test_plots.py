"""Every figure fits its canvas: each public plotting function drawn from synthetic arrays."""

from __future__ import annotations

import matplotlib.figure
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.layout_engine import ConstrainedLayoutEngine

from genlab import plots

BOUND = 4.0
TITLE = "rectified_flow on moons, round 1 step 12000"
TOL = 0.01  # inches: one pixel at 100 dpi
MARGIN = 0.25  # inches of blank canvas allowed between the artists and any edge


def _gaussian(mean, std):
    def log_prob(x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - torch.tensor(mean, dtype=torch.float64)) / std
        return -0.5 * (z**2).sum(1) - np.log(2 * np.pi * std**2)

    return log_prob


def _blob(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal([0.8, 0.4], 0.7, size=(n, 2))


def _paths(T: int = 12, n: int = 100) -> np.ndarray:
    """Straight lines from a standard normal (t=0) to a blob (t=1), shape (T, n, 2)."""
    t = np.linspace(0, 1, T)[:, None, None]
    return (1 - t) * np.random.default_rng(0).normal(size=(n, 2)) + t * _blob(n, 1)


def _density(path):
    log_truth = plots.grid_log_density(_gaussian([1.0, 0.5], 0.7), BOUND, 40)
    log_model = plots.grid_log_density(_gaussian([0.7, 0.2], 0.85), BOUND, 40)
    plots.plot_density(log_truth, log_model, BOUND, TITLE, path)


DRAW = {
    "samples": lambda path: plots.plot_samples(_blob(500, 0), _blob(500, 1), BOUND, TITLE, path),
    "density": _density,
    "trajectories": lambda path: plots.plot_trajectories(
        [("round 0", _paths()), ("round 1", 0.9 * _paths())], _blob(500, 2), BOUND, TITLE, path
    ),
    "trajectories_one_panel": lambda path: plots.plot_trajectories(
        [("noise (t=0) to samples (t=1)", _paths())], _blob(500, 2), BOUND, TITLE, path
    ),
    "density_snapshots": lambda path: plots.plot_density_snapshots(
        {t: plots.grid_log_density(_gaussian([t, t], 1 - t / 2), BOUND, 30) for t in (0, 0.5, 1)},
        BOUND,
        f"{TITLE}: p_t",
        path,
    ),
    "quality_vs_steps": lambda path: plots.plot_quality_vs_steps(
        {"round 0": {1: 1.2, 2: 0.6, 4: 0.3}, "round 1": {1: 0.3, 2: 0.2, 4: 0.12}},
        0.05,
        TITLE,
        path,
    ),
    "quality_vs_nfe": lambda path: plots.plot_quality_vs_nfe(
        {
            data: (
                {
                    "diffusion, ancestral": {1: 2.0, 10: 0.5, 1000: 0.2},
                    "diffusion, ddim": {1: 2.1, 10: 0.4, 1000: 0.2},
                    "rectified_flow round 1, euler (ODE)": {1: 0.4, 10: 0.25, 100: 0.2},
                },
                0.15,
            )
            for data in ("moons", "8gaussians")
        },
        TITLE,
        path,
    ),
}


@pytest.fixture
def drawn(monkeypatch):
    """Record each figure as it is saved, after drawing it once more on its own canvas."""
    saved: list[matplotlib.figure.Figure] = []
    savefig = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        savefig(fig, *args, **kwargs)
        fig.canvas.draw()  # before plt.close swaps the Agg canvas out
        fig.test_tightbbox = fig.get_tightbbox(fig.canvas.get_renderer())
        saved.append(fig)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return saved


@pytest.mark.parametrize("name", DRAW)
def test_every_artist_inside_canvas(name, tmp_path, drawn):
    """tightbbox(all artists) is inside [0, W] x [0, H], no label, title or colour bar clips,
    and reaches within MARGIN of every edge, so no canvas is wasted."""
    path = tmp_path / f"{name}.png"
    DRAW[name](path)
    assert path.is_file() and path.stat().st_size > 0
    (fig,) = drawn
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    box, (w, h) = fig.test_tightbbox, fig.get_size_inches()
    assert box.x0 >= -TOL and box.y0 >= -TOL, (box, w, h)
    assert box.x1 <= w + TOL and box.y1 <= h + TOL, (box, w, h)
    assert max(box.x0, box.y0, w - box.x1, h - box.y1) <= MARGIN, (box, w, h)
    texts = [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]
    assert any(TITLE in t for t in texts)


def test_quality_axes_tick_every_step_count(tmp_path, drawn):
    curves = {"ddim": {1: 2.0, 2: 1.0, 4: 0.6, 10: 0.3, 20: 0.2, 100: 0.15, 1000: 0.14}}
    plots.plot_quality_vs_steps(curves, 0.13, TITLE, tmp_path / "q.png")
    (fig,) = drawn
    ax = fig.axes[0]
    assert ax.get_xlabel() == "sampling steps"
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in curves["ddim"]]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["ddim", "W2 floor (data vs data)"]


def test_density_ratio_masks_and_explains_negligible_cells(tmp_path, drawn):
    """Cells where both densities are negligible are masked (NaN), and a caption says so."""
    _density(tmp_path / "density.png")
    (fig,) = drawn
    ratio_ax = fig.axes[2]
    ratio = ratio_ax.images[0].get_array()
    assert np.isnan(ratio.filled(np.nan)).any() and np.isfinite(ratio.filled(np.nan)).any()
    assert to_rgba(ratio_ax.images[0].cmap.get_bad()) == to_rgba(plots.NEGLIGIBLE_COLOR)
    captions = [t.get_text() for t in ratio_ax.texts]
    assert any("grey" in c and f"{plots.NEGLIGIBLE:g}" in c for c in captions)


def test_trajectory_end_points_use_the_time_colour_map_ends(tmp_path, drawn):
    """The t=0 and t=1 dots are cmap(0) and cmap(1) of the paths' colour map, and labelled."""
    DRAW["trajectories"](tmp_path / "trajectories.png")
    (fig,) = drawn
    ax = fig.axes[0]
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    cmap = lines.get_cmap()
    assert cmap.name == plots.TIME_CMAP and lines.get_clim() == (0, 1)
    dots = {c.get_label(): c.get_facecolor()[0] for c in ax.collections if c is not lines}
    np.testing.assert_allclose(dots["t=0 (noise)"], cmap(0.0))
    np.testing.assert_allclose(dots["t=1 (sample)"], cmap(1.0))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["t=0 (noise)", "t=1 (sample)"]
