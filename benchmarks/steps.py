"""Training steps per second of each model at its shipped defaults, through genlab's trainer.

Each model is built from ``conf/`` (its own batch size, learning rate and every knob), then
trained on fresh moons batches by :class:`genlab.trainer.Trainer`, the code path of a run,
in blocks of ``--steps`` steps; the median steps/s of ``--repeats`` blocks is printed after a
warm-up block (which a compiled step spends compiling: its seconds are printed too). Run it
on an idle machine:

    python benchmarks/steps.py --models nice cnf --threads 1 --steps 200 --repeats 5
    python benchmarks/steps.py model.couplings=8 --models nice      # overrides first
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from genlab.configs import get_toy, model_options
from genlab.trainer import History, Trainer


def build(model: str, overrides: list[str]):
    with initialize_config_module(config_module="genlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}", *overrides])
    torch.manual_seed(0)
    return instantiate(cfg.model), cfg.train


def rate(model: str, overrides: list[str], steps: int, repeats: int) -> tuple[float, float, list]:
    """(seconds of the warm-up block, median steps/s, every block's steps/s)."""
    net, train = build(model, overrides)
    toy = get_toy("moons")
    gen = torch.Generator().manual_seed(0)
    trainer = Trainer(
        net, steps=10**9, lr=train.lr, grad_clip=train.grad_clip, log_every=0, progress=False
    )
    batch = train.batch_size

    def block() -> float:
        start = time.perf_counter()
        trainer.steps = trainer.step + steps
        trainer.fit(lambda: (toy.sample(batch, gen),), History())
        return time.perf_counter() - start

    warm = block()
    rates = [steps / block() for _ in range(repeats)]
    return warm, statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every model")
    parser.add_argument("--models", nargs="+", default=model_options())
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200, help="steps a block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), blocks of {args.steps} steps")
    print("| model | warm-up block (s) | steps/s (median) | blocks |\n|---|---|---|---|")
    for model in args.models:
        warm, median, rates = rate(model, args.overrides, args.steps, args.repeats)
        shown = ", ".join(f"{r:.1f}" for r in rates)
        print(f"| {model} | {warm:.2f} | {median:.1f} | {shown} |", flush=True)


if __name__ == "__main__":
    main()
