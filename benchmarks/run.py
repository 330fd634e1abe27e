"""genlab's figures under the peers' protocol: fresh data each step, batch 256, Adam lr 1e-3.

Trains each model on each data set through ``genlab.runner.train`` (the same code path as the
``genlab`` command) and prints KL +- SE, W2 / floor, training seconds, sampling seconds for
10,000 samples, NFE and, for models scored against sampling steps at the end of a run
(diffusion), each few-step sampler's W2 at 10 steps, as a Markdown table. Run it on an otherwise
idle machine:

    python benchmarks/run.py                       # every model on four toys
    python benchmarks/run.py --models nice --data moons --repeats 3
    python benchmarks/run.py model.depth=3 --models nice --data 2spirals   # overrides first
"""

from __future__ import annotations

import argparse
import statistics

from common import train_run

from genlab import scores
from genlab.configs import data_options, model_options

DATA = ("8gaussians", "moons", "checkerboard", "2spirals")
FEW_STEPS = 10  # the step count of the few-step column


def run_one(model: str, data: str, seed: int, extra: list[str]) -> dict:
    return train_run(model, data, seed, ["train.batch_size=256", "train.lr=1e-3", *extra])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # choices also catch an override typed after --data, which argparse would read as a name
    models = model_options()
    parser.add_argument("--models", nargs="+", default=models, choices=models)
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=data_options())
    parser.add_argument("--repeats", type=int, default=1, help="seeds per cell (medians)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. train.steps=1000")
    args = parser.parse_args()
    head = (
        "model",
        "data",
        "steps",
        "test NLL",
        "KL (nats)",
        "W2 / floor",
        "train s",
        "steps/s",
        "sample s (10k)",
        "NFE",
        f"W2 at {FEW_STEPS} steps",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for model in args.models:
        for data in args.data:
            runs = [run_one(model, data, seed, args.overrides) for seed in range(args.repeats)]
            med = {
                k: statistics.median(r[k] for r in runs)
                for k in (
                    "nll",
                    "kl",
                    "kl_se",
                    "w2",
                    "w2_floor",
                    "train_seconds",
                    "steps_per_second",
                    "sample_seconds",
                )
            }
            nfe = runs[0].get("nfe", "")
            few_step = [scores.at_steps(scores.read(r), FEW_STEPS) for r in runs]
            few = ", ".join(
                f"{name} {statistics.median(f[name] for f in few_step):.2f}" for name in few_step[0]
            )
            print(
                f"| {model} | {data} | {runs[0]['steps']} | {med['nll']:.3f}"
                f" | {med['kl']:.3f} ± {med['kl_se']:.3f}"
                f" | {med['w2']:.2f} / {med['w2_floor']:.2f} | {med['train_seconds']:.0f}"
                f" | {med['steps_per_second']:.1f} | {med['sample_seconds']:.2f} | {nfe} | {few} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
