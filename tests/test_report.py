"""The sweep report, the yardstick's fixed points and sweeps through Hydra's launchers."""

import json
import subprocess
import sys

import pytest
import torch

from genlab.data import get_toy
from genlab.metrics import kl_to_truth, wasserstein2
from genlab.models.base import Model
from genlab.report import collect, main, write_report
from tests.conftest import tiny_overrides


class Truth(Model):
    """A data set's own log_prob and sampler wrapped as a model: KL must be 0."""

    name = "truth"

    def __init__(self, toy):
        super().__init__()
        self.toy = toy
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def log_prob(self, x):
        return self.toy.log_prob(x)

    def sample(self, n, generator=None):
        return self.toy.sample(n, generator)


@pytest.mark.parametrize("name", ["moons", "checkerboard"])
def test_kl_of_the_truth_is_zero(name):
    toy = get_toy(name)
    out = kl_to_truth(Truth(toy), toy, 2000, torch.Generator().manual_seed(0))
    assert abs(out["kl"]) <= max(3 * out["kl_se"], 1e-12)
    assert out["nll"] == pytest.approx(out["test_entropy"])


def test_w2_of_data_against_itself_is_zero_and_the_floor_is_small():
    toy = get_toy("8gaussians")
    g = torch.Generator().manual_seed(0)
    x = toy.sample(500, g)
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-12)
    floor = wasserstein2(toy.sample(500, g), toy.sample(500, g))
    shifted = wasserstein2(x, x + torch.tensor([1.0, 0.0]))
    assert 0 < floor < shifted == pytest.approx(1.0, abs=1e-6)


def fake_run(root, name, model, data, **extra):
    run = root / name
    run.mkdir(parents=True)
    metrics = {
        "model": model,
        "data": data,
        "kl": 0.1,
        "kl_se": 0.01,
        "w2": 0.3,
        "w2_floor": 0.2,
        "train_seconds": 12.0,
        "steps": 100,
        **extra,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_report_keeps_good_runs_and_names_the_bad(tmp_path, capsys):
    fake_run(tmp_path, "0", "nice", "moons", nice_floor=0.0358)
    fake_run(tmp_path, "1", "cnf", "moons", nfe=40)
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "metrics.json").write_text("{not json")
    runs, problems = collect(tmp_path)
    assert [r["model"] for r in runs] == ["nice", "cnf"]
    assert len(problems) == 1 and "2/metrics.json" in problems[0]
    assert main([str(tmp_path)]) == 0
    board = (tmp_path / "leaderboard.md").read_text()
    assert "| moons | nice | 0.100 ± 0.010 | 0.0358 | 0.30 / 0.20 |" in board
    assert "| moons | cnf |" in board
    assert (tmp_path / "leaderboard.csv").read_text().count("\n") == 3
    assert (tmp_path / "gallery.png").stat().st_size > 0


@pytest.mark.parametrize("make", ["missing", "empty", "only_bad"])
def test_report_on_nothing_says_why(tmp_path, make, capsys):
    target = tmp_path / "sweep"
    if make != "missing":
        target.mkdir()
    if make == "only_bad":
        (target / "0").mkdir()
        (target / "0" / "metrics.json").write_text("[]")
    assert main([str(target)]) == 1
    err = capsys.readouterr().err
    assert str(target) in err
    assert {"missing": "no such sweep dir", "empty": "no runs", "only_bad": "1 unreadable"}[
        make
    ] in err
    with pytest.raises((FileNotFoundError, ValueError)):
        write_report(target)


@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_multirun_sweep_writes_runs_and_report(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides("nice") if not o.startswith("data=")]
    cmd = [
        sys.executable,
        "-m",
        "genlab",
        "-m",
        "data=moons,8gaussians",
        *overrides,
        f"hydra.sweep.dir={sweep}",
        f"hydra/launcher={launcher}",
    ]
    if launcher == "submitit_local":
        cmd += ["hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in sweep.glob("*/metrics.json")) == ["metrics.json"] * 2
    assert {p.parent.name for p in sweep.glob("*/metrics.json")} == {
        "0_nice_moons",
        "1_nice_8gaussians",
    }
    board = (sweep / "leaderboard.md").read_text()
    assert "| moons | nice |" in board and "| 8gaussians | nice |" in board
    assert (sweep / "gallery.png").is_file()
