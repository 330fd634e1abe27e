"""How long a run's density figures take, by the size of the bands the grid is solved in.

An ODE model's density on a grid is an adaptive solve per band of points, which steps as finely
as the band's stiffest point needs. This times ``genlab.plots.grid_log_density`` of a trained
run's model (``density.png``'s grid, the model's own likelihood solver) at several band sizes,
and prints the largest difference from the first size where the figure shows anything (within
12 nats of the peak). Run it on an otherwise idle machine, one thread:

    python benchmarks/figures.py outputs/multirun/<sweep>/0_diffusion_moons --grid 100
    python benchmarks/figures.py RUN_DIR --chunks 10000 1000 500 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import genlab
from genlab import plots
from genlab.runs import load_toy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a trained run dir (model.pt)")
    parser.add_argument("--grid", type=int, default=100, help="points per side")
    parser.add_argument("--chunks", nargs="+", type=int, default=[10_000, 1_000])
    parser.add_argument("--repeats", type=int, default=1, help="timings per size (median)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, toy = genlab.load_run(args.run_dir), load_toy(args.run_dir)
    print(f"{model.name} on {toy.name}, {args.grid}x{args.grid} grid, {args.threads} thread(s)")
    print("| points per band | seconds (median) | max abs difference where shown (nats) |")
    print("|---|---|---|")
    first = None
    for chunk in args.chunks:
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            log_q = plots.grid_log_density(model.log_prob, toy.bound, args.grid, chunk=chunk)
            seconds.append(time.perf_counter() - start)
        if first is None:
            first = log_q
        shown = first > first.max() - 12
        diff = float(np.abs(log_q - first)[shown].max())
        print(f"| {chunk:,} | {statistics.median(seconds):.1f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
