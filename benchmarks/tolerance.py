"""The likelihood solve's error against its tolerance: how loose can the reported KL's solve be?

For each finished run of an ODE model (CNF, rectified flow, diffusion), ``log q`` of the run's
own test set (the yardstick's draw: ``eval.seed``, ``eval.n_test`` points) is solved at a tight
reference tolerance and at each candidate, with dopri5 and the run's weights. Printed per
tolerance: the shift of the KL (the mean of ``log q`` over the test set, which is all that
moves) in units of the run's KL standard error, the largest error of one point's ``log q``,
the NFE of the solve and its seconds. The same for the density figure's grid (``eval.grid``
points a side), where the largest error is taken where the figure shows anything (within
12 nats of the peak). The budget the yardstick keeps: a KL shift below 0.1 SE.

    python benchmarks/tolerance.py RUN_DIR [RUN_DIR ...] --tolerances 1e-4 1e-5 1e-6
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from genlab import metrics, plots
from genlab.runs import load_run, load_toy

SHOWN_NATS = 12.0  # the figure's colour range below the peak
TEST_CHUNK = 10_000  # points per solve of the test set, as genlab.metrics.kl_to_truth's


def _solve(model, x: torch.Tensor, tol: float, chunk: int) -> tuple[torch.Tensor, int, float]:
    """``log q`` of ``x`` at tolerance ``tol``, solved ``chunk`` points at a time as the
    yardstick (or the figures) solve it; with its NFE and seconds."""
    model.likelihood = model.likelihood.replace(atol=tol, rtol=tol)
    nfe0, start = model.nfe, time.perf_counter()
    log_q = metrics.batched_log_prob(model.log_prob, x, chunk)
    return log_q, model.nfe - nfe0, time.perf_counter() - start


def study(run_dir: Path, tolerances: list[float], reference: float, grid: int | None) -> None:
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    saved = json.loads((run_dir / "metrics.json").read_text())
    if "kl" not in saved:
        print(f"\n{run_dir}: {saved['model']} has no density, so no likelihood solve; skipped")
        return
    model, toy = load_run(run_dir), load_toy(run_dir)
    gen = torch.Generator().manual_seed(cfg.eval.seed)
    x = toy.sample(cfg.eval.n_test, gen)  # the yardstick's test set: its first draw
    n = grid or cfg.eval.grid
    pts = plots.grid_points(toy.bound, n).float()
    se = saved["kl_se"]
    print(f"\n{saved['model']} on {saved['data']}: KL {saved['kl']:.4f} +- {se:.4f}")
    with torch.no_grad():
        ref, nfe, sec = _solve(model, x, reference, TEST_CHUNK)
        ref_grid, gnfe, gsec = _solve(model, pts, reference, plots.DENSITY_CHUNK)
        print(
            f"  reference {reference:g}: test set {nfe} NFE {sec:.1f} s, "
            f"grid {gnfe} NFE {gsec:.1f} s"
        )
        shown = ref_grid >= ref_grid.max() - SHOWN_NATS
        print("  tol      KL shift   max |d log q|  NFE   s   | grid: max |d| shown  NFE   s")
        for tol in tolerances:
            log_q, nfe, sec = _solve(model, x, tol, TEST_CHUNK)
            shift = (ref - log_q).mean().item() / se  # KL = mean(log p - log q)
            worst = (log_q - ref).abs().max().item()
            g, gnfe, gsec = _solve(model, pts, tol, plots.DENSITY_CHUNK)
            gworst = (g - ref_grid)[shown].abs().max().item()
            print(
                f"  {tol:<7g} {shift:+8.3f} SE  {worst:11.2e}  {nfe:5d} {sec:5.1f} "
                f"|        {gworst:9.2e}  {gnfe:5d} {gsec:5.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tolerances", nargs="+", type=float, default=[1e-4, 1e-5, 1e-6])
    parser.add_argument("--reference", type=float, default=1e-8)
    parser.add_argument("--grid", type=int, help="points a side (default: the run's eval.grid)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run_dir in args.runs:
        study(run_dir, args.tolerances, args.reference, args.grid)


if __name__ == "__main__":
    main()
