"""Where a run's evaluation time goes: the yardstick and every figure of finished runs, under
cProfile, phase by phase.

Each run dir's checkpoint is loaded (with its per-stage records) and evaluated again exactly as
the run's end does it (:func:`genlab.metrics.evaluate`, then
:meth:`genlab.figures.RunFigures.final`, with the run's own ``eval`` and ``plots`` settings),
in a temporary dir. The table gives the cumulative seconds of the functions each phase is
made of (a phase includes the calls it makes: ``W2`` is counted inside ``scores``, the model's
grid inside ``density.png``), the evaluation's wall time and the run's training time, and,
with ``--check``, how far the re-evaluated KL is from the one in the run's ``metrics.json`` in
units of its standard error (the same checkpoint and seeds give the same figures unless the
code changed them).

    python benchmarks/evaluation.py outputs/multirun/<sweep>/*/ [--threads 1] [--check]
    python benchmarks/evaluation.py RUN_DIR --likelihood 1e-5 --check   # another tolerance
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path

#: (phase, the functions it is timed by: module file suffix and name). The cumulative time of
#: each listed function is summed over its calls; nested phases are listed under their parent.
PHASES = (
    ("evaluate (metrics.json)", [("genlab/metrics.py", "evaluate")]),
    ("  KL: log q of the test set", [("genlab/metrics.py", "kl_to_truth")]),
    ("  sampling_cost", [("genlab/metrics.py", "sampling_cost")]),
    ("  scores (W2 vs steps)", [("genlab/metrics.py", "quality_vs_steps")]),
    ("  cross-entropy", [("genlab/metrics.py", "cross_entropy")]),
    ("  W2 (every exact OT solve)", [("genlab/metrics.py", "wasserstein2")]),
    ("figures", [("genlab/figures.py", "final")]),
    ("  density grids (model, truth)", [("genlab/plots.py", "grid_log_density")]),
    ("  trajectories + p_t", [("genlab/figures.py", "_transport")]),
    ("  flow.gif", [("genlab/figures.py", "_animate")]),
    (
        "  drawing (matplotlib)",
        [
            ("genlab/plots.py", name)
            for name in (
                "plot_samples",
                "plot_density",
                "plot_trajectories",
                "plot_density_snapshots",
                "plot_quality_vs_steps",
                "animate_flow",
            )
        ],
    ),
)


def _cumulative(stats: pstats.Stats, functions) -> float:
    total = 0.0
    for (path, _, name), row in stats.stats.items():
        if any(path.endswith(suffix) and name == fn for suffix, fn in functions):
            total += row[3]  # cumulative time (recursive calls are counted once)
    return total


def profile_run(
    run_dir: Path, threads: int, animate: bool = False, likelihood: float | None = None
) -> dict:
    """Evaluate one finished run again under cProfile; returns its phases, wall time and KL."""
    import torch
    from omegaconf import OmegaConf

    from genlab import metrics
    from genlab.figures import RunFigures
    from genlab.runs import load_checkpoint, load_run, load_toy

    torch.set_num_threads(threads)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    model, toy = load_run(run_dir), load_toy(run_dir)
    if likelihood is not None and hasattr(model, "likelihood"):  # the run's own, else
        model.likelihood = model.likelihood.replace(atol=likelihood, rtol=likelihood)
    records = load_checkpoint(run_dir)["records"]
    e = cfg.eval
    profiler = cProfile.Profile()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        profiler.enable()
        out = metrics.evaluate(
            model, toy, seed=e.seed, n_test=e.n_test, n_w2=e.n_w2, n_timing=e.n_timing
        )
        animate = animate or bool(cfg.plots.animate)
        figures = RunFigures(model, toy, Path(tmp), seed=e.seed, grid=e.grid, animate=animate)
        figures.final(0, records, out["w2_floor"], out)
        profiler.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    saved = json.loads((run_dir / "metrics.json").read_text())
    return {
        "run": f"{saved['model']} on {saved['data']}",
        "phases": {label: _cumulative(stats, fns) for label, fns in PHASES},
        "wall": wall,
        "train": saved.get("train_seconds"),
        "metrics": out,
        "saved": saved,
    }


def kl_shift(out: dict, saved: dict) -> str:
    """The re-evaluated KL against the run's, in units of the run's SE."""
    if "kl" not in saved or "kl" not in out:
        return "no KL"
    return f"{(out['kl'] - saved['kl']) / saved['kl_se']:+.3f} SE"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run dirs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--check", action="store_true", help="compare the KL with the run's metrics.json"
    )
    parser.add_argument(
        "--animate", action="store_true", help="draw flow.gif too (a compare run does not)"
    )
    parser.add_argument(
        "--likelihood",
        type=float,
        help="solve log q at this dopri5 tolerance (atol = rtol), not the run's own",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    for run_dir in args.runs:
        result = profile_run(run_dir, args.threads, args.animate, args.likelihood)
        results.append(result)
        print(
            f"\n{result['run']}: evaluation {result['wall']:.1f} s "
            f"(training {result['train']:.0f} s)",
            flush=True,
        )
        for label, seconds in result["phases"].items():
            if seconds:
                print(f"  {label:<34} {seconds:7.1f} s")
        if args.check:
            print(f"  KL against the run's: {kl_shift(result['metrics'], result['saved'])}")
    if args.json:
        rows = [{k: v for k, v in r.items() if k != "saved"} for r in results]
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
