"""The figures of one run, chosen by what the model can do, never by its name.

Every model gets ``samples.png`` and ``samples.npz`` (the arrays the sweep gallery draws), and
a model with a density ``density.png`` (truth | model | log ratio). A model without one
(``has_density`` false) has a histogram of its samples in ``samples.npz`` instead, named as
such, never a density. A :class:`genlab.models.base.Transport` also gets ``trajectories.png``
(one panel per stage of a multi-stage model) and, with a density, ``density_t.png`` (p_t
along the path). A conditional model gets ``guidance.png``: each class's samples at each
guidance scale over the truth's conditional density. Scores of W2 against sampling steps,
per stage of a multi-stage model or at the end of the run, give ``quality_vs_steps.png``.
Every model with a path from noise to data gets ``flow.gif``: the points of a
:class:`Transport` moving from t=0 to t=1 over p_t, those of a
:class:`genlab.models.base.Layered` model pushed through its layers one at a time, and the
rounds of a multi-stage model side by side. The drawing itself is in :mod:`genlab.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from genlab import metrics, plots, scores
from genlab.files import atomic
from genlab.fit import TRAJECTORY_PATHS
from genlab.models.base import Layered, Model, Transport

__all__ = ["SNAPSHOT_TIMES", "RunFigures"]

SNAPSHOT_TIMES = (0.0, 0.25, 0.5, 0.75, 1.0)
VIEW_POINTS = 5000  # data and model points in the sample scatter plots
FLOW_POINTS = 300  # points moving in flow.gif
FLOW_DATA = 2000  # grey data points behind them
FLOW_DENSITY_EVERY = 4  # p_t behind them every 4th frame, interpolated (in log) in between
HISTOGRAM_POINTS = 50_000  # samples in the histogram of a model without a density
GUIDED_POINTS = 500  # samples of each class at each guidance scale in guidance.png
#: How far below the uniform density on the figure's square a log-density may be given only
#: up to a floor (``Model.figure_log_prob``). Any density's peak on the square is at least
#: about the uniform one (its mass is nearly all there), and the figures show nothing 10 nats
#: below the peak: the density panels are linear (e^-10 of the peak is no colour), and the
#: ratio panel is grey or clipped there (NEGLIGIBLE = e^-6.9, RATIO_CLIP = 3 nats).
FLOOR_NATS = 25.0


class RunFigures:
    """Draws one run's figures into ``run_dir``; every draw is seeded by ``seed``.

    Arguments:
        model, toy: the model (through its public interface) and its data set.
        run_dir: where the PNGs go.
        seed: the evaluation seed (the same data view and noise for every model).
        grid: points per side of the density grids (an eighth of it behind ``flow.gif``).
        animate: write ``flow.gif`` (``plots.animate``).
        source: the name (a toy's label) of the distribution a transport starts from; the
            titles and the labels of the paths name it when it is not the Gaussian noise.
    """

    def __init__(
        self,
        model: Model,
        toy,
        run_dir: Path,
        *,
        seed: int,
        grid: int,
        animate: bool = True,
        source: str = "gaussian",
    ) -> None:
        self.model, self.toy, self.run_dir = model, toy, Path(run_dir)
        self.seed, self.grid, self.animate = seed, grid, animate
        data = getattr(toy, "label", toy.name)  # with its constants when not the defaults
        self.title = f"{model.name} on {data}"
        self.start = "noise"
        if source != "gaussian":
            self.title = f"{model.name}: {source} to {data}"
            self.start = source
        self._grids: dict[tuple[float, int], np.ndarray] = {}  # log p_t by (t, n): (n, n)
        gen = torch.Generator(model.device).manual_seed(seed)
        self.data = toy.sample(VIEW_POINTS, gen).numpy(force=True)

    def _gen(self) -> torch.Generator:
        return torch.Generator(self.model.device).manual_seed(self.seed)

    @torch.no_grad()
    def _samples(self) -> np.ndarray:
        return self.model.sample(VIEW_POINTS, self._gen()).numpy(force=True)

    def progress(self, trainer) -> None:
        """Refresh ``samples.png`` during training (a trainer hook)."""
        title = f"{self.title}, round {trainer.round} step {trainer.step}"
        plots.plot_samples(
            self.data, self._samples(), self.toy.bound, title, self.run_dir / "samples.png"
        )
        self.model.train()

    def final(
        self,
        steps: int,
        records: Sequence[dict],
        w2_floor: float,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Every figure of the trained model.

        Arguments:
            steps: optimiser steps in all, for the titles.
            records: per-stage records of a multi-stage model (``report`` and ``paths``).
            w2_floor: the data's own W2 noise floor, drawn on the quality figure.
            metrics: the run's metrics; their end-of-run scores of quality against steps are
                drawn beside the per-stage ones.
        """
        model, bound, title = self.model, self.toy.bound, f"{self.title}, step {steps}"
        xs = self._samples()
        plots.plot_samples(self.data, xs, bound, title, self.run_dir / "samples.png")
        dtype = next(model.parameters()).dtype
        self._grids = {}  # solved again for the weights the model has now
        if model.has_density:
            log_q = self._grid(1.0, dtype, self.grid)
            log_p = truth_grid(self.toy, self.grid)
            plots.plot_density(log_p, log_q, bound, title, self.run_dir / "density.png")
        else:
            with torch.no_grad():
                many = model.sample(HISTOGRAM_POINTS, self._gen()).numpy(force=True)
            log_q = plots.log_histogram(many, bound, self.grid // 2)
        with atomic(self.run_dir / "samples.npz") as tmp:
            np.savez_compressed(
                tmp,
                samples=xs[:2000],
                log_density=log_q,
                bound=bound,
                histogram=not model.has_density,
            )
        if getattr(model, "classes", 0) and getattr(self.toy, "classes", 0) == model.classes:
            self._guidance(title)
        if isinstance(model, Transport):
            self._transport(title, records, dtype)
        if self.animate:
            self._animate(title, records, dtype)
        curves = quality_curves(records, metrics)
        if curves:
            plots.plot_quality_vs_steps(
                curves,
                w2_floor,
                f"{self.title}: W2 vs steps",
                self.run_dir / "quality_vs_steps.png",
            )

    @torch.no_grad()
    def _guidance(self, title: str) -> None:
        """``guidance.png``: each class's samples at each guidance scale of the yardstick, over
        the truth's conditional density."""
        toy, model, n = self.toy, self.model, max(self.grid // 2, 16)
        pts = plots.grid_points(toy.bound, n)
        log_truth = np.stack(
            [
                toy.log_prob(pts, torch.full((len(pts),), k)).reshape(n, n).numpy()
                for k in range(toy.classes)
            ]
        )
        samples = {}
        for w in metrics.GUIDANCE_SCALES:
            gen = self._gen()
            samples[w] = [
                model.sample(GUIDED_POINTS, gen, y=k, guidance=float(w)).numpy(force=True)
                for k in range(toy.classes)
            ]
        path = self.run_dir / "guidance.png"
        plots.plot_guidance(log_truth, samples, toy.bound, f"{title}: guidance", path)

    def _transport(self, title: str, records: Sequence[dict], dtype: torch.dtype) -> None:
        model, bound = self.model, self.toy.bound
        panels = [(f"round {k}", r["paths"].numpy()) for k, r in enumerate(records)]
        if not panels:
            paths = model.trajectories(TRAJECTORY_PATHS, self._gen()).numpy(force=True)
            panels = [(f"{self.start} (t=0) to samples (t=1)", paths)]
        plots.plot_trajectories(
            panels, self.data, bound, title, self.run_dir / "trajectories.png", self.start
        )
        if not model.has_density:
            return
        snaps = {t: self._grid(t, dtype) for t in SNAPSHOT_TIMES}
        plots.plot_density_snapshots(snaps, bound, f"{title}: p_t", self.run_dir / "density_t.png")

    @torch.no_grad()
    def _animate(self, title: str, records: Sequence[dict], dtype: torch.dtype) -> None:
        """``flow.gif``, chosen by what the model can do; nothing for a model without a path."""
        model, frames = self.model, plots.FRAMES
        rounds = [
            (f"round {k}", r["paths"]) for k, r in enumerate(records) if r["paths"] is not None
        ]
        times = [f"t = {t:.2f}" for t in np.linspace(0, 1, frames)]
        if len(rounds) > 1:
            panels = [plots.Panel(label, plots.resample(p.numpy())) for label, p in rounds]
            captions = times
        elif isinstance(model, Transport):
            paths = model.trajectories(FLOW_POINTS, self._gen(), points=frames).numpy(force=True)
            if model.has_density:
                grid, keys = max(self.grid // 8, 8), (frames - 1) // FLOW_DENSITY_EVERY + 1
                log_pt = [self._grid(t, dtype, grid) for t in np.linspace(0, 1, keys).tolist()]
                log_pt = plots.resample(np.stack(log_pt), frames)
                label = f"{self.start} (t=0) to data (t=1) over p_t"
                panels = [plots.Panel(label, paths, log_pt)]
            else:
                panels = [plots.Panel(f"{self.start} (t=0) to data (t=1)", paths)]
            captions = times
        elif isinstance(model, Layered):
            states = model.layer_states(FLOW_POINTS, self._gen()).numpy(force=True)
            layers = len(states) - 1
            panels = [plots.Panel("noise through the layers", plots.resample(states))]
            captions = [
                f"layer {math.ceil(pos)} of {layers}" if pos else "noise"
                for pos in np.linspace(0, layers, frames)
            ]
        else:
            return
        data = self.data[:FLOW_DATA]
        plots.animate_flow(panels, captions, data, self.toy.bound, title, self.run_dir / "flow.gif")

    def _grid(self, t: float, dtype: torch.dtype, n: int | None = None) -> np.ndarray:
        """The model's log p_t on the n x n grid (default: half the density grid's side), by
        ``figure_log_prob``, solved once a run: a finer grid of the same ``t`` already solved
        (density.png's for t=1, the snapshots' for flow.gif's frames) gives it by averaging
        the density over each of its cells (:func:`genlab.plots.pool_log_density`), the
        figure a coarser grid of cells shows, for none of the solve's cost."""
        n = n or self.grid // 2
        for (t_done, m), log_pt in self._grids.items():
            if math.isclose(t_done, t, abs_tol=1e-9) and m % n == 0:
                return plots.pool_log_density(log_pt, m // n)
        model, at = self.model, {} if t == 1.0 else {"t": t}  # a density has no t but 1
        bound = self.toy.bound
        floor = -math.log((2 * bound) ** 2) - FLOOR_NATS
        log_pt = plots.grid_log_density(
            lambda x: model.figure_log_prob(x, floor=floor, **at), bound, n, model.device, dtype
        )
        self._grids[(t, n)] = log_pt
        return log_pt


_TRUTH_GRIDS: dict[tuple, np.ndarray] = {}  # truth_grid's, once a process


def truth_grid(toy, n: int) -> np.ndarray:
    """The truth's log-density on the n x n grid of :func:`genlab.plots.grid_points`, solved
    once a process for each toy and size (a curve toy's quadrature takes seconds; the runs of
    a sweep share it). A toy without :meth:`genlab.data.base.Toy._cache_key` is not cached."""
    key = getattr(toy, "_cache_key", lambda: None)()
    if key is not None and (key, n) in _TRUTH_GRIDS:
        return _TRUTH_GRIDS[(key, n)]
    log_p = plots.grid_log_density(toy.log_prob, toy.bound, n, "cpu", torch.float64)
    if key is not None:
        log_p.setflags(write=False)  # shared: nobody may change it
        _TRUTH_GRIDS[(key, n)] = log_p
    return log_p


def quality_curves(
    records: Sequence[dict], metrics: Mapping[str, float] | None = None
) -> dict[str, dict[int, float]]:
    """``{label: {steps: W2}}`` from the scores of per-stage reports and of the end-of-run
    ``metrics`` (read by :func:`genlab.scores.read`).

    A per-stage label is the stage (``round k``), with the sampler's name when a model has
    several; an end-of-run label is the sampler's name.
    """
    curves: dict[str, dict[int, float]] = {}
    staged = [(k, score) for k, r in enumerate(records) for score in scores.read(r["report"])]
    samplers = {score.sampler for _, score in staged}
    for k, score in staged:
        label = f"round {k}" if len(samplers) == 1 else f"{score.sampler}, round {k}"
        curves.setdefault(label, {})[score.steps] = score.w2
    for score in scores.read(metrics or {}):
        if score.stage is None:
            curves.setdefault(score.sampler, {})[score.steps] = score.w2
    return curves
