"""A new model or a new toy is one class plus one YAML: nothing in genlab/ changes.

The model below (a full-covariance Gaussian fitted by maximum likelihood) and the toy (a
tilted Gaussian blob) live in this test module; their YAMLs are written to a temporary config
dir that Hydra's search path picks up. The real ``genlab`` command sweeps them beside a shipped
model and toy, trains, evaluates and draws each run, and the sweep report lists them in its
leaderboard and gallery, exactly as it does genlab's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from genlab.data import Toy
from genlab.models.base import Model, check_count, check_points
from genlab.runner import train
from tests.conftest import TINY, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


class FullCovGaussian(Model):
    """``N(mu, L L^T)`` with ``L`` lower triangular with a positive diagonal."""

    name = "gaussian"

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.dim = dim
        self.mean = nn.Parameter(torch.zeros(dim))
        self.raw = nn.Parameter(torch.zeros(dim, dim))  # diagonal stored as its log

    @property
    def scale_tril(self) -> Tensor:
        return torch.tril(self.raw, -1) + torch.diag(self.raw.diagonal().exp())

    def log_prob(self, x: Tensor) -> Tensor:
        check_points(x, self.dim)
        dist = torch.distributions.MultivariateNormal(self.mean, scale_tril=self.scale_tril)
        return dist.log_prob(x)

    def loss(self, x: Tensor) -> Tensor:
        return -self.log_prob(x).mean()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(check_count(n), self.dim, generator=generator, device=self.mean.device)
        return self.mean + z @ self.scale_tril.T


class Blob(Toy):
    """``N(0, C)`` with ``C = [[1, 0.6], [0.6, 1]]``: a NICE (one shear and a scaling) can
    fit it exactly, so its constant-Jacobian floor is 0."""

    name = "blob"
    bound = 6.0
    constant_log_det_floor = 0.0
    COV = ((1.0, 0.6), (0.6, 1.0))

    @property
    def mean(self):
        return (0.0, 0.0)

    @property
    def covariance(self):
        return self.COV

    def _dist(self, device):
        cov = torch.tensor(self.COV, dtype=torch.float64, device=device)
        return torch.distributions.MultivariateNormal(torch.zeros(2, device=device), cov)

    def _sample(self, n, g, device):
        z = torch.randn(n, 2, generator=g, device=device, dtype=torch.float64)
        return z @ torch.linalg.cholesky(torch.tensor(self.COV, dtype=torch.float64)).T

    def _log_prob(self, x):
        return self._dist(x.device).log_prob(x)


MODEL_YAML = f"""\
# @package _global_
model:
  _target_: {__name__}.FullCovGaussian
  dim: 2

train:
  steps: 300
  lr: 3.0e-2
"""
TOY_YAML = f"_target_: {__name__}.Blob\n"


def _plugin_conf(root: Path) -> Path:
    conf = root / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "data").mkdir()
    (conf / "model" / "gaussian.yaml").write_text(MODEL_YAML)
    (conf / "data" / "blob.yaml").write_text(TOY_YAML)
    return conf


def test_a_plugin_model_and_toy_run_through_a_sweep_into_its_report(tmp_path):
    conf = _plugin_conf(tmp_path)
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY if not o.startswith("train.steps")]
    cmd = [
        sys.executable,
        "-m",
        "genlab",
        "-m",
        "model=gaussian",
        "data=blob,moons",
        *overrides,
        f"hydra.searchpath=[file://{conf}]",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no data points" not in done.stdout + done.stderr  # the gallery built both toys

    runs = {}
    for path in sweep.glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        runs[metrics["data"]] = (path.parent, metrics)
    assert set(runs) == {"blob", "moons"}
    for run, metrics in runs.values():
        assert metrics["model"] == "gaussian" and metrics["steps"] == 300  # its own budget
        assert {"samples.png", "density.png", "model.pt", "history.csv"} <= set(os.listdir(run))
        assert "nice_floor" not in metrics
        assert not {"trajectories.png", "flow.gif"} & set(os.listdir(run))  # it has no path
        assert 0 < metrics["kl"] < 5 and metrics["w2_floor"] > 0
    # Maximum likelihood fits the blob to its noise; no Gaussian fits the moons.
    assert runs["blob"][1]["kl"] < 0.05 < runs["moons"][1]["kl"]
    board = (sweep / "leaderboard.md").read_text()
    assert "| blob | gaussian |" in board and "| moons | gaussian |" in board
    assert (sweep / "gallery.png").is_file()


def test_a_plugin_toy_states_its_own_floor(compose_cfg, tmp_path):
    conf = _plugin_conf(tmp_path)
    cfg = compose_cfg([*tiny_overrides("nice", "blob"), f"hydra.searchpath=[file://{conf}]"])
    out = train(cfg, tmp_path / "run")
    assert out["data"] == "blob" and out["nice_floor"] == 0.0


def test_the_wheel_lists_every_package():
    """pyproject.toml names genlab's packages by hand (conf/ is mapped into the wheel as
    genlab.conf); a new subpackage left out of that list would be missing from `pip install .`."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from setuptools import find_packages

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set(find_packages(str(ROOT), include=["genlab*"])) | {"genlab.conf"}
    assert listed == found
