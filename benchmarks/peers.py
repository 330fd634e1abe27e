"""Side by side with zuko (the library people would use instead), in one process.

Times a training step of the same architecture on the same batches, alternating the two so
machine noise hits both alike, and prints medians. Needs zuko (not a genlab dependency):

    pip install zuko==1.6.0 && python benchmarks/peers.py

- NICE: 8 additive couplings of 3x128 (ReLU, zuko's default; zuko also needs
  ``univariate=AdditiveTransform``, or its NICE is affine), batch 256, Adam 1e-3.
- CNF: a 3x64 velocity field, exact divergence, dopri5 at atol = rtol = 1e-5, batch 256;
  both trained for the same warm-up steps first, since the solver's work grows with training.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from genlab.data import get_toy
from genlab.models import CNF, NICE
from genlab.nn import TimeMLP
from genlab.ode import Solver


def step_seconds(loss_fn, opt, batches, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(next(batches))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def batches(data: str, seed: int = 0):
    toy, g = get_toy(data), torch.Generator().manual_seed(seed)
    while True:
        yield toy.sample(256, g)


def compare(name: str, ours, theirs, steps: int, repeats: int, warmup: int) -> None:
    times = {"genlab": [], "zuko": []}
    sides = {
        label: (loss_fn, torch.optim.Adam(list(params), lr=1e-3), stream)
        for label, (loss_fn, params, stream) in (("genlab", ours), ("zuko", theirs))
    }
    for side in sides.values():
        step_seconds(*side, warmup)  # the same amount of training for both
    for _ in range(repeats):
        for label, side in sides.items():
            times[label].append(step_seconds(*side, steps))
    g, z = statistics.median(times["genlab"]), statistics.median(times["zuko"])
    print(f"| {name} | {1 / g:.1f} | {1 / z:.1f} | {z / g:.2f}x |", flush=True)


def main() -> None:
    import zuko

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| model (data) | genlab steps/s | zuko steps/s | genlab speed-up |")
    print("|---|---|---|---|")

    ours = NICE(couplings=8, hidden=128, depth=3, activation="relu")
    # zuko's NICE is affine (RealNVP) unless told otherwise: ask for NICE's additive coupling
    theirs = zuko.flows.NICE(
        2,
        transforms=8,
        hidden_features=(128,) * 3,
        univariate=zuko.transforms.AdditiveTransform,
        shapes=[()],
    )
    compare(
        "NICE 8x(3x128) (moons)",
        (ours.loss, ours.parameters(), batches("moons")),
        (lambda x: -theirs().log_prob(x).mean(), theirs.parameters(), batches("moons")),
        steps=100,
        repeats=args.repeats,
        warmup=50,
    )

    solver = Solver("dopri5", atol=1e-5, rtol=1e-5)
    ours = CNF(TimeMLP(2, 64, 3, "tanh"), solver, solver, solver)
    theirs = zuko.flows.CNF(2, hidden_features=(64,) * 3, exact=True, atol=1e-5, rtol=1e-5)
    compare(
        "CNF 3x64 exact, dopri5 1e-5 (8gaussians)",
        (ours.loss, ours.parameters(), batches("8gaussians")),
        (lambda x: -theirs().log_prob(x).mean(), theirs.parameters(), batches("8gaussians")),
        steps=5,
        repeats=args.repeats,
        warmup=30,
    )


if __name__ == "__main__":
    main()
