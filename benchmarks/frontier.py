"""The few-step frontier of a sweep: W2 at each NFE for every sampler and generator, per toy.

Reads the runs of a sweep (``genlab experiment=story data=...``, or any sweep whose runs score
few-step samplers) through the report's own reader and the scores' grammar, and prints, per
data set, one row per curve of ``quality_vs_nfe.png`` (W2 at 1, 2, 4, 10, 20, 100 and 1,000
NFE, blank where the curve has no score), then the targets of the few-step issue:

- diffusion: the best sampler at 10 and at 20 NFE against the model's own 1,000-step
  probability-flow W2 (Euler at 1,000 steps);
- each one-step generator: its one-step W2 against the floor (the yardstick's ``w2`` and
  ``w2_floor``, drawn together), and the truth's cross-entropy of its samples against the
  rectified flow's at its default 8-NFE sampler;
- the seconds of 10,000 one-step samples (``sample_seconds``) against the rectified flow's at
  its default 8 NFE.

    python benchmarks/frontier.py outputs/multirun/<date_time>
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genlab.report import collect, quality_points, sweep_order

NFES = (1, 2, 4, 10, 20, 100, 1000)
ONE_STEP = ("meanflow", "distill")


def fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(runs: list[dict]) -> None:
    print("| curve | " + " | ".join(f"{k} NFE" for k in NFES) + " |")
    print("|---|" + "---|" * len(NFES))
    for m in runs:
        for label, curve in quality_points(m).items():
            print(f"| {label} | " + " | ".join(fmt(curve.get(k)) for k in NFES) + " |")


def targets(runs: list[dict]) -> None:
    by_model = {m["model"]: m for m in runs}
    diffusion, flow = by_model.get("diffusion"), by_model.get("rectified_flow")
    if diffusion is not None and "w2_euler1000" in diffusion:
        reference = diffusion["w2_euler1000"]
        curves = quality_points(diffusion)
        for nfe in (10, 20):
            at = {label: c[nfe] for label, c in curves.items() if nfe in c}
            best = min(at, key=at.get)
            print(
                f"- diffusion, best at {nfe} NFE: {best} {at[best]:.3f} = "
                f"{at[best] / reference:.2f}x its 1000-step ODE W2 ({reference:.3f}); "
                + ", ".join(f"{label.split(', ', 1)[1]} {w:.3f}" for label, w in at.items())
            )
    for name in ONE_STEP:
        m = by_model.get(name)
        if m is None:
            continue
        # the yardstick's own W2 and floor (the same draws; its default sampler is one step)
        w2, floor = m["w2"], m["w2_floor"]
        line = f"- {name}: one-step W2 {w2:.3f} = {w2 / floor:.2f}x the floor ({floor:.3f})"
        ce = m.get("cross_entropy")
        if flow is not None and ce is not None and flow.get("cross_entropy") is not None:
            line += (
                f"; cross-entropy {ce:.3f} against the rectified flow's {flow['cross_entropy']:.3f}"
                f" at 8 NFE ({ce - flow['cross_entropy']:+.3f} nats; entropy {m['entropy']:.3f})"
            )
        elif m.get("off_support") is not None:
            line += f"; {100 * m['off_support']:.2f}% of samples off the support"
            if flow is not None and flow.get("off_support") is not None:
                line += f" (rectified flow at 8 NFE: {100 * flow['off_support']:.2f}%)"
        if flow is not None and flow.get("sample_seconds") and m.get("sample_seconds"):
            ratio = flow["sample_seconds"] / m["sample_seconds"]
            line += (
                f"; 10k samples in {m['sample_seconds']:.3f} s against the rectified flow's "
                f"{flow['sample_seconds']:.3f} s ({ratio:.1f}x)"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args()
    runs, problems = collect(args.sweep_dir)
    for p in problems:
        print(f"skipped {p}")
    for data in sweep_order(runs, "data"):
        here = [m for m in runs if m["data"] == data]
        print(f"\n### {data} (W2 floor {here[0]['w2_floor']:.3f})\n")
        table(here)
        print()
        targets(here)


if __name__ == "__main__":
    main()
