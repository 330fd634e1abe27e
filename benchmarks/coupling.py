"""The rectified flow's noise-data coupling: independent pairs against minibatch OT (OT-CFM).

Each run trains a default rectified flow through genlab's own composition root, with the same
number of steps (not seconds: the assignment problem of every OT batch costs time, and the
question here is what the pairing does to the field). Each run is then scored on:

- KL to the exact density (the run's ``metrics.json``, dopri5 1e-6);
- straightness ``E_t E |v(t, x_t) - (x1 - x0)|^2`` on 2,000 of the flow's own (noise, sample)
  pairs (0: every path straight at constant speed; :meth:`RectifiedFlow.straightness`);
- W2 after 1, 2, 4 and 8 Euler steps against 2,000 fresh data points, the same noise for
  every step count (:func:`genlab.metrics.quality_vs_steps`), beside the data's W2 floor.

    python benchmarks/coupling.py --data 8gaussians moons --steps 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from genlab import metrics
from genlab.runner import train as genlab_train
from genlab.runs import load_run, load_toy
from genlab.scores import flatten

EULER_STEPS = (1, 2, 4, 8)


def one_run(data: str, coupling: str, steps: int, seed: int) -> dict:
    overrides = [
        "model=rectified_flow",
        f"data={data}",
        f"model.coupling={coupling}",
        f"train.steps={steps}",
        f"seed={seed}",
        "threads=1",
        "train.progress=false",
        "train.log_every=0",
        "train.checkpoint_every=0",
        "eval.grid=40",  # the figures do not enter the scores
        "plots.animate=false",
    ]
    with initialize_config_module(config_module="genlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        scores = genlab_train(cfg, run_dir)
        model, toy = load_run(run_dir), load_toy(run_dir)
    gen = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        x0, x1 = model.make_pairs(2000, gen)
        scores["straightness"] = model.straightness(x0, x1)
        scores.update(flatten(metrics.quality_vs_steps(model, toy, gen, 2000, EULER_STEPS)))
    scores["wall"] = time.perf_counter() - start
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["8gaussians", "moons", "checkerboard"])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    euler = " | ".join(f"W2 euler {k}" for k in EULER_STEPS)
    print(f"{args.steps} steps a run, 1 thread, seed {args.seed}")
    print(f"| data | coupling | KL | straightness | {euler} | W2 floor | train s |")
    print("|---|---|---|---|" + "---|" * len(EULER_STEPS) + "---|---|")
    for data in args.data:
        for coupling in ("independent", "ot"):
            s = one_run(data, coupling, args.steps, args.seed)
            w2 = " | ".join(f"{s[f'w2_euler{k}']:.3f}" for k in EULER_STEPS)
            print(
                f"| {data} | {coupling} | {s['kl']:.3f} ± {s['kl_se']:.3f}"
                f" | {s['straightness']:.3f} | {w2} | {s['w2_floor']:.3f}"
                f" | {s['train_seconds']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
