"""genlab's trainer against a bare eager PyTorch loop of the same step, in one process.

The step is the default rectified flow's: the same TimeMLP (3x128 SiLU), batch 256 of fresh
moons, Adam 1e-3 (fused), gradient clipping at 1, the EMA update. The bare loop has nothing
else; the trainer adds its NaN guard, history row, progress bar (off here, as in sweeps),
schedule and hooks. Blocks of each alternate, so machine noise hits both alike; medians of
the blocks are printed with their ratio (target: >= 0.95)::

    python benchmarks/loop.py --threads 1 --steps 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from genlab.configs import get_toy
from genlab.trainer import History, Trainer


def make_model():
    with initialize_config_module(config_module="genlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=rectified_flow"])
    torch.manual_seed(0)
    return instantiate(cfg.model)


def bare_loop(model, batches, steps: int) -> float:
    """Steps per second of the plain loop: forward, backward, clip, Adam, EMA."""
    opt = torch.optim.Adam(model.velocity.parameters(), lr=1e-3, fused=True)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.loss(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.velocity.parameters(), 1.0)
        opt.step()
        model.after_step()
    return steps / (time.perf_counter() - start)


def trainer_loop(model, batches, steps: int) -> float:
    """Steps per second of genlab's Trainer on the same step."""
    trainer = Trainer(model, steps=steps, progress=False, log_every=0)
    start = time.perf_counter()
    trainer.fit(lambda: (next(batches),), History())
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    toy, gen = get_toy("moons"), torch.Generator().manual_seed(0)

    def stream():
        while True:
            yield toy.sample(256, gen)

    batches = stream()
    bare, ours = [], []
    bare_loop(make_model(), batches, 200)  # warm-up
    for _ in range(args.repeats):
        bare.append(bare_loop(make_model(), batches, args.steps))
        ours.append(trainer_loop(make_model(), batches, args.steps))
    b, o = statistics.median(bare), statistics.median(ours)
    print("| threads | bare loop steps/s | genlab trainer steps/s | ratio |")
    print("|---|---|---|---|")
    print(f"| {args.threads} | {b:.0f} | {o:.0f} | {o / b:.3f} |")


if __name__ == "__main__":
    main()
