"""A new model is one class plus one YAML: nothing in genlab/ changes.

The model below (a full-covariance Gaussian fitted by maximum likelihood) lives in this test
module; its YAML is written to a temporary config dir that Hydra's search path picks up. The
real ``genlab`` command trains it, evaluates it, draws its figures, and the sweep report lists
it, exactly as it does genlab's own models.
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

from genlab.models.base import Model, check_count, check_points
from tests.conftest import TINY

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


YAML = f"""\
_target_: {__name__}.FullCovGaussian
dim: 2
"""


def test_a_plugin_model_runs_end_to_end_through_the_cli(tmp_path):
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "gaussian.yaml").write_text(YAML)
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY if not o.startswith("train.steps")]
    cmd = [
        sys.executable,
        "-m",
        "genlab",
        "-m",
        "model=gaussian",
        "data=moons,8gaussians",
        "train.steps=300",
        "train.lr=3e-2",
        *overrides,
        f"hydra.searchpath=[file://{conf}]",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 2
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["model"] == "gaussian" and metrics["steps"] == 300
        assert {"samples.png", "density.png", "model.pt", "history.csv"} <= {
            p.name for p in run.iterdir()
        }
        assert "nice_floor" not in metrics
        assert not {"trajectories.png", "flow.gif"} & set(os.listdir(run))  # it has no path
        # A Gaussian cannot fit the toys, but maximum likelihood gets it to the best Gaussian:
        # its KL is finite and positive and its W2 far above the data's own floor.
        assert 0 < metrics["kl"] < 5 and metrics["w2"] > metrics["w2_floor"]
    board = (sweep / "leaderboard.md").read_text()
    assert "| moons | gaussian |" in board and "| 8gaussians | gaussian |" in board
    assert (sweep / "gallery.png").is_file()


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
