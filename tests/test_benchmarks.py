"""The benchmark tooling's own bookkeeping (the benchmarks themselves run on idle machines,
never in the suite)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    if str(BENCHMARKS) not in sys.path:  # as when run as a script: common.py beside it
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_budget_table_reads_back_as_the_runs_it_printed(tmp_path, capsys):
    """``budget.py --from`` draws saved runs: the table it prints must parse back to them."""
    budget = load("budget")
    runs = [
        {"model": "nice", "data": "rings", "budget": 60.0, "seed": 0, "steps": 4577,
         "steps_per_second": 76.3, "kl": 0.502, "kl_se": 0.006, "nice_floor": 0.0303,
         "w2": 0.304, "w2_floor": 0.185},
        {"model": "cnf", "data": "moons", "budget": 540.0, "seed": 2, "steps": 42537,
         "steps_per_second": 78.8, "kl": 0.046, "kl_se": 0.002, "w2": 0.15, "w2_floor": 0.139},
    ]  # fmt: skip
    budget.print_table(runs)
    table = tmp_path / "runs.md"
    table.write_text("some heading\n" + capsys.readouterr().out + "a median line\n")
    back = budget.read_table(table)
    assert len(back) == 2
    for run, read in zip(runs, back, strict=True):
        for key, value in run.items():
            assert read[key] == pytest.approx(value, abs=1e-3), key
    assert "nice_floor" not in back[1]
    assert back[0]["train_seconds"] == 60.0


def test_the_frontier_table_prints_each_curve_at_its_nfe_and_the_targets(tmp_path, capsys):
    """``frontier.py`` reads a sweep through the report: each score lands in its NFE column,
    and the targets compare the right runs."""
    import json

    frontier = load("frontier")
    runs = {
        "diffusion": {"w2_ddim10": 0.30, "nfe_ddim10": 10, "w2_heun5": 0.22, "nfe_heun5": 10,
                      "w2_euler1000": 0.20, "nfe_euler1000": 1000, "w2_dpmpp20": 0.21,
                      "nfe_dpmpp20": 20, "kl": 0.05},
        "rectified_flow": {"cross_entropy": 2.50, "sample_seconds": 0.10, "kl": 0.03},
        "meanflow": {"w2_meanflow1": 0.24, "nfe_meanflow1": 1, "sec_meanflow1": 0.01, "w2": 0.26,
                     "cross_entropy": 2.55, "entropy": 2.39, "sample_seconds": 0.02},
    }  # fmt: skip
    for job, (model, extra) in enumerate(runs.items()):
        run = tmp_path / f"{job}_{model}_moons"
        run.mkdir()
        metrics = {"model": model, "data": "moons", "w2": 0.25, "w2_floor": 0.2} | extra
        (run / "metrics.json").write_text(json.dumps(metrics))
    sys.argv = ["frontier.py", str(tmp_path)]
    frontier.main()
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines()}
    assert rows["diffusion, heun"][4] == "0.220"  # the 10-NFE column
    assert rows["meanflow, meanflow"][1] == "0.240"
    assert "best at 10 NFE: diffusion, heun 0.220 = 1.10x its 1000-step ODE W2" in out
    assert "one-step W2 0.260 = 1.30x the floor" in out
    assert "(+0.050 nats" in out and "(5.0x)" in out
