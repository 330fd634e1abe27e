"""Shared test helpers: composing the real Hydra config with tiny budgets."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from genlab.configs import data_options, model_options

# `pytest -n 2` runs two tests at once on two cores: one torch thread for each, and for every
# command a test starts (they inherit the environment), so that they do not fight over cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# The shipped models and toys: the options of the model and data config groups.
MODELS = tuple(model_options())
DATASETS = tuple(data_options())

# A few steps, small nets and small evaluation sets: every model runs end to end in seconds.
# No flow.gif (3 s a run): the tests of the animation ask for it with plots.animate=true.
TINY = [
    "train.steps=6",
    "train.batch_size=64",
    "train.log_every=3",
    "train.checkpoint_every=3",
    "train.progress=false",
    "eval.n_test=400",
    "eval.n_w2=200",
    "eval.n_timing=200",
    "eval.grid=24",
    "plots.animate=false",
]
TINY_MODEL = {
    "nice": ["model.couplings=2", "model.hidden=16", "model.depth=1"],
    "realnvp": ["model.couplings=2", "model.hidden=16", "model.depth=1"],
    "glow": ["model.steps=2", "model.hidden=16", "model.depth=1"],
    "nsf": ["model.couplings=2", "model.bins=4", "model.hidden=16", "model.depth=1"],
    "cnf": [
        "model.velocity.hidden=16",
        "model.velocity.depth=1",
        "model.train_solver.atol=1e-3",
        "model.train_solver.rtol=1e-3",
        "model.likelihood.atol=1e-4",
        "model.likelihood.rtol=1e-4",
    ],
    "rectified_flow": [
        "model.velocity.hidden=16",
        "model.velocity.depth=1",
        "model.likelihood.atol=1e-4",
        "model.likelihood.rtol=1e-4",
        "model.reflow_pairs=256",
        "model.reflow_steps=4",
    ],
    "schrodinger_bridge": [
        "model.velocity.hidden=16",
        "model.velocity.depth=1",
        "model.score.hidden=16",
        "model.score.depth=1",
        "model.likelihood.atol=1e-4",
        "model.likelihood.rtol=1e-4",
    ],
    "meanflow": ["model.network.hidden=16", "model.network.depth=1"],
    "distill": [
        "model.velocity.hidden=16",
        "model.velocity.depth=1",
        "model.reflow_pairs=256",
        "model.distill_pairs=256",
        "model.distill_steps=4",
    ],
    "diffusion": [
        "model.network.hidden=16",
        "model.network.depth=1",
        "model.likelihood.atol=1e-4",
        "model.likelihood.rtol=1e-4",
    ],
}


def tiny_overrides(model: str, data: str = "moons") -> list[str]:
    return [f"model={model}", f"data={data}", *TINY, *TINY_MODEL.get(model, [])]


def tiny_sweep(*extra: str) -> list[str]:
    """The ``genlab -m`` command of a tiny NICE sweep over moons and 8gaussians."""
    overrides = [o for o in tiny_overrides("nice") if not o.startswith("data=")]
    return [sys.executable, "-m", "genlab", "-m", "data=moons,8gaussians", *overrides, *extra]


@pytest.fixture
def compose_cfg():
    """Compose ``conf/config.yaml`` (installed as ``genlab.conf``) with overrides, as the
    ``genlab`` command does."""

    def _compose(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="genlab.conf", version_base="1.3"):
            return compose(config_name="config", overrides=overrides)

    yield _compose
    GlobalHydra.instance().clear()
