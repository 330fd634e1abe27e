"""Transports between toys and conditional flows, scored on finished runs (docs/bridges.md).

For every run below the given dirs (a sweep's, say ``genlab experiment=compare
model=rectified_flow data=moons source=gaussian,8gaussians model.coupling=independent,ot``),
prints one Markdown row: the source and the target, the coupling, the run's KL and W2 beside
the floor (from ``metrics.json``), and the W2 of a one-step Euler map, the straightness that
minibatch OT buys, on the yardstick's own draws (``eval.seed``, ``eval.n_w2`` points). A
conditional run (``conditional=true``) gets a second table: its mean conditional KL, the
conditional W2 of one Euler step (each class's samples against that class's data, averaged
over the classes with their weights) and the truth's cross-entropy of guided samples.

    python benchmarks/bridges.py /path/to/sweep [more run or sweep dirs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from genlab import metrics
from genlab.runs import load_run, load_toy


def runs_below(paths: list[Path]) -> list[Path]:
    """Every run dir (holding ``metrics.json``) at or below ``paths``, in order."""
    found = []
    for path in paths:
        found += sorted(p.parent for p in path.rglob("metrics.json"))
    return found


@torch.no_grad()
def one_step(run: Path) -> dict:
    """The run's metrics beside its one-step Euler W2 (and, for a conditional run, the
    conditional one)."""
    m = json.loads((run / "metrics.json").read_text())
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    model, toy = load_run(run), load_toy(run)
    n = cfg.eval.n_w2
    gen = torch.Generator().manual_seed(cfg.eval.seed)
    m["coupling"] = cfg.model.get("coupling", "-")
    m["w2_euler1"] = metrics.wasserstein2(
        model.sample(n, gen, method="euler", steps=1), toy.sample(n, gen)
    )
    if m.get("classes"):
        total = 0.0
        for k, p in enumerate(toy.class_probs):
            x, y = toy.sample_labelled(8 * n, gen)
            data = x[y == k][:n]
            fake = model.sample(len(data), gen, method="euler", steps=1, y=k)
            total += p * metrics.wasserstein2(fake, data)
        m["class_w2_euler1"] = total
    return m


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep dirs")
    args = parser.parse_args(argv)
    rows = [one_step(run) for run in runs_below(args.dirs)]
    print("| source -> data | coupling | KL (nats) | W2 / floor | 1-step Euler W2 / floor |")
    print("|---|---|---|---|---|")
    for m in rows:
        floor = m["w2_floor"]
        print(
            f"| {m.get('source', 'gaussian')} -> {m['data']} | {m['coupling']} "
            f"| {m['kl']:.3f} ± {m['kl_se']:.3f} | {m['w2']:.3f} / {floor:.3f} "
            f"| {m['w2_euler1']:.3f} / {floor:.3f} ({m['w2_euler1'] / floor:.2f}x) |"
        )
    conditional = [m for m in rows if m.get("classes")]
    if not conditional:
        return
    ws = metrics.GUIDANCE_SCALES
    print()
    print(
        "| data | coupling | class KL (nats) | per-class KL [min, max] | 1-step class W2 "
        "| H(X|Y) | " + " | ".join(f"CE at w={w}" for w in ws) + " |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(ws))
    for m in conditional:
        per = [m[f"class_kl_{k}"] for k in range(m["classes"])]
        ce = [m.get(f"guided_ce_w{w}") for w in ws]
        ce = [f"{c:.3f}" if c is not None else "∞" for c in ce]
        print(
            f"| {m['data']} | {m['coupling']} | {m['class_kl']:.3f} ± {m['class_kl_se']:.3f} "
            f"| [{min(per):.3f}, {max(per):.3f}] | {m['class_w2_euler1']:.3f} "
            f"| {m['class_test_entropy']:.3f} | " + " | ".join(ce) + " |"
        )


if __name__ == "__main__":
    main()
