"""Seconds to draw 10,000 samples, every shipped model at its defaults, in one process.

Each model is built from its config (``conf/model/<name>.yaml``) and timed by the yardstick's
own timer (``genlab.metrics.sampling_cost``: a warm-up draw, then the median of several), on
one thread. The weights are the freshly initialised ones: a fixed-step sampler and a stack
of layers cost the same whatever their weights, while an adaptive solver's cost (dopri5) does
depend on them, so models that sample with one are marked. Run on an idle machine:

    python benchmarks/sampling.py
    python benchmarks/sampling.py --models nsf rectified_flow --n 10000 --repeats 7
"""

from __future__ import annotations

import argparse

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from genlab.configs import model_options
from genlab.metrics import sampling_cost


def build(model: str) -> torch.nn.Module:
    with initialize_config_module(config_module="genlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}"])
    torch.manual_seed(0)
    return instantiate(cfg.model).eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=model_options(), choices=model_options())
    parser.add_argument("--n", type=int, default=10_000, help="samples a draw")
    parser.add_argument("--repeats", type=int, default=5, help="timed draws (their median)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.n} samples, median of {args.repeats} draws, 1 thread")
    print("| model | sampler | seconds |")
    print("|---|---|---|")
    for name in args.models:
        model = build(name)
        sampler = getattr(model, "sampler", None)
        if sampler is None and isinstance(getattr(model, "steps", None), int):
            how = f"{model.steps} network evaluation{'s' * (model.steps > 1)}"
        elif sampler is None:
            how = "its layers"
        elif sampler.method == "dopri5":
            how = "dopri5 (adaptive: its cost depends on the weights)"
        else:
            how = f"{sampler.method}, {sampler.steps} steps"
        cost = sampling_cost(model, args.n, torch.Generator().manual_seed(0), args.repeats)
        print(f"| {name} | {how} | {cost['sample_seconds']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
