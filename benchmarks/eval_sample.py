"""The evaluation sample's share of a KL: finished runs scored on other test sets.

A run's KL is a mean over ``eval.n_test`` test points drawn from ``eval.seed``, the same
points for every run, so the test set adds nothing to a spread over training seeds; its own
share is the KL's standard error. This scores each run's saved model on ``--draws`` other
test sets of the same size (seeds ``--first``, ``--first + 1``, ...) and prints the KLs,
their standard deviation and the run's own standard error, so the two can be compared
against the spread over the seeds that trained the runs.

    python benchmarks/eval_sample.py RUN_DIR [RUN_DIR ...] --draws 5 --first 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from omegaconf import OmegaConf

from genlab.metrics import kl_to_truth
from genlab.runs import load_run, load_toy


def score(run_dir: Path, draws: int, first: int) -> None:
    saved = json.loads((run_dir / "metrics.json").read_text())
    if "kl" not in saved:
        print(f"{run_dir.name}: {saved['model']} has no density, so no KL; skipped")
        return
    n = OmegaConf.load(run_dir / ".hydra" / "config.yaml").eval.n_test
    model, toy = load_run(run_dir), load_toy(run_dir)
    kls = []
    with torch.no_grad():
        for k in range(draws):
            kls.append(kl_to_truth(model, toy, n, torch.Generator().manual_seed(first + k))["kl"])
    print(
        f"{run_dir.name}: KL {saved['kl']:.4f} +- {saved['kl_se']:.4f} (eval.seed); "
        f"test sets {first}-{first + draws - 1}: "
        + ", ".join(f"{k:.4f}" for k in kls)
        + f"; sd {statistics.stdev(kls):.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run dirs")
    parser.add_argument("--draws", type=int, default=5, help="test sets per run (>= 2)")
    parser.add_argument("--first", type=int, default=1000, help="the first test set's seed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.draws < 2:
        parser.error(f"--draws must be at least 2 for a standard deviation, got {args.draws}")
    torch.set_num_threads(args.threads)
    for run in args.runs:
        score(run, args.draws, args.first)


if __name__ == "__main__":
    main()
