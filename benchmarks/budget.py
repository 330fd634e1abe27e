"""KL against the training budget: is a 60 s target out of reach, or only a few seconds short?

Trains one model on each toy under several wall-clock budgets, at ``experiment=compare``'s
protocol (one torch thread a run, ``--jobs`` runs at a time, the cosine schedule following the
budget, the model's shipped defaults), and prints, per budget, the steps it made, KL +- SE to
the exact density, KL above the NICE floor (constant-Jacobian models) and W2. Every budget is a
run of its own, so each point is what a user gets who trains that long, not a mid-run snapshot
of a longer schedule. Run it on an otherwise idle machine:

    python benchmarks/budget.py --model nice --data rings 2spirals --seconds 60 180 540
    python benchmarks/budget.py model.hidden=128 --model cnf --data rings --seconds 30 60 \\
        --seeds 0 1 --plot kl_vs_budget.png           # Hydra overrides first
    python benchmarks/budget.py --from a.md b.md --plot kl.png --target 0.3   # draw saved runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from common import BY_TIME, train_run

from genlab.configs import data_options, model_options

MODELS = tuple(model_options())


def run_one(model: str, data: str, seconds: float, seed: int, extra: list[str]) -> dict:
    """One run of ``seconds`` of training; returns its metrics with the run's settings."""
    metrics = train_run(model, data, seed, [*BY_TIME, f"train.max_seconds={seconds}", *extra])
    return {"model": model, "data": data, "budget": seconds, "seed": seed, **metrics}


def _above(run: dict) -> float:
    """KL above the NICE floor (the KL itself for models without one)."""
    return run["kl"] - run.get("nice_floor", 0.0)


def plot(rows: list[dict], path: Path, target: float | None) -> None:
    """KL (above the NICE floor where there is one) against seconds and against steps, with
    the ``target`` as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for data in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == data]
        budgets = sorted({r["budget"] for r in mine})
        for ax, key in zip(axes, ("train_seconds", "steps"), strict=True):
            # every run a dot, the medians over seeds a line
            dots = ax.plot(
                [r[key] for r in mine], [_above(r) for r in mine], "o", alpha=0.6, label=data
            )
            at = [[r for r in mine if r["budget"] == b] for b in budgets]
            ax.plot(
                [statistics.median(r[key] for r in runs) for runs in at],
                [statistics.median(map(_above, runs)) for runs in at],
                "-",
                color=dots[0].get_color(),
            )
    floor = "KL above the NICE floor" if "nice_floor" in rows[0] else "KL"
    for ax, label, key in zip(
        axes,
        ("training seconds (one thread)", "optimiser steps"),
        ("train_seconds", "steps"),
        strict=True,
    ):
        ax.set_xscale("log")  # budgets grow by factors; KL on a linear scale
        ticks = sorted(
            {
                round(statistics.median(r[key] for r in rows if r["budget"] == b))
                for b in {r["budget"] for r in rows}
            }
        )
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        if target is not None:
            ax.axhline(target, color="0.4", linestyle="--", label=f"target {target:g}")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{floor} (nats)")
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{rows[0]['model']}: KL against the training budget, each point its own run")
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


HEAD = (
    "model",
    "data",
    "budget s",
    "seed",
    "steps",
    "steps/s",
    "KL (nats)",
    "above floor",
    "W2 / floor",
)


def train_all(
    model: str, data: list[str], seconds: list[float], seeds: list[int], jobs: int, extra: list
) -> list[dict]:
    """Every (toy, budget, seed) run, ``jobs`` at a time, the longest first (so they end
    together)."""
    cells = [(d, s, seed) for d in data for s in seconds for seed in seeds]
    cells.sort(key=lambda c: -c[1])
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, model, d, s, seed, extra) for d, s, seed in cells]
        return [f.result() for f in futures]


def print_table(rows: list[dict]) -> None:
    print("| " + " | ".join(HEAD) + " |")
    print("|" + "---|" * len(HEAD))
    for r in rows:
        floor = r.get("nice_floor")
        above = "" if floor is None else f"{r['kl'] - floor:.3f}"
        print(
            f"| {r['model']} | {r['data']} | {r['budget']:g} | {r['seed']} | {r['steps']} "
            f"| {r['steps_per_second']:.1f} | {r['kl']:.3f} ± {r['kl_se']:.3f} | {above} "
            f"| {r['w2']:.3f} / {r['w2_floor']:.3f} |",
            flush=True,
        )


def read_table(path: Path) -> list[dict]:
    """The runs of a table :func:`print_table` wrote (other lines are skipped), so runs of
    several invocations can be drawn together (``--from``)."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != len(HEAD) or cells[0] not in MODELS:
            continue
        model, data, budget, seed, steps, rate, kl, above, w2 = cells
        kl_value, kl_se = (float(v) for v in kl.split("±"))
        w2_value, w2_floor = (float(v) for v in w2.split("/"))
        row = {
            "model": model,
            "data": data,
            "budget": float(budget),
            "train_seconds": float(budget),  # the table has the budget, which it ran to
            "seed": int(seed),
            "steps": int(steps),
            "steps_per_second": float(rate),
            "kl": kl_value,
            "kl_se": kl_se,
            "w2": w2_value,
            "w2_floor": w2_floor,
        }
        if above:
            row["nice_floor"] = round(kl_value - float(above), 4)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nice", choices=MODELS)
    parser.add_argument("--data", nargs="+", default=["rings", "2spirals"])
    parser.add_argument("--seconds", nargs="+", type=float, default=[60.0, 180.0, 540.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--plot", type=Path, help="also draw KL against seconds and steps")
    parser.add_argument("--target", type=float, help="draw this KL (above the floor) as a line")
    parser.add_argument(
        "--from",
        dest="tables",
        nargs="+",
        type=Path,
        help="read the runs from tables this script printed instead of training (to draw them)",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.hidden=128")
    args = parser.parse_args()
    toys = data_options()
    for data in args.data:
        if data not in toys:
            parser.error(f"unknown toy {data!r}; choose from {', '.join(toys)}")
    if any(not s > 0 for s in args.seconds) or args.jobs < 1:
        parser.error("--seconds must be > 0 and --jobs >= 1")
    if args.tables:
        rows = [r for path in args.tables for r in read_table(path)]
        if not rows:
            parser.error(f"no runs in {', '.join(map(str, args.tables))}")
        args.data = list(dict.fromkeys(r["data"] for r in rows))
        args.seconds = sorted({r["budget"] for r in rows})
        args.seeds = sorted({r["seed"] for r in rows})
    else:
        rows = train_all(args.model, args.data, args.seconds, args.seeds, args.jobs, args.overrides)
    print_table(sorted(rows, key=lambda r: (args.data.index(r["data"]), r["budget"], r["seed"])))
    if len(args.seeds) > 1:
        print()
        for d in args.data:
            for s in args.seconds:
                runs = [r for r in rows if r["data"] == d and r["budget"] == s]
                if runs:
                    kl = statistics.median(r["kl"] for r in runs)
                    above = statistics.median(map(_above, runs))
                    print(f"{d}, {s:g} s, median of {len(runs)}: KL {kl:.3f}, above {above:.3f}")
    if args.plot:
        plot(rows, args.plot, args.target)


if __name__ == "__main__":
    main()
