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
