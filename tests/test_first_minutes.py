"""What a new user meets in the first ten minutes: short runs that look trained, docs that
match the configs, typos that are caught, silence that is not."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

import genlab
from genlab import knobs
from genlab.configs import check_additions, compose_config, get_toy
from genlab.errors import ConfigError
from genlab.metrics import kl_to_truth
from genlab.runner import train
from tests.conftest import MODELS, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_rectified_flow_run_evaluates_trained_weights(compose_cfg, tmp_path):
    """The EMA warms up, so after 300 steps it is close to the trained weights, not to the
    initial ones (a fixed decay of 0.999 would still be three quarters initial)."""
    cfg = compose_cfg(
        [
            *tiny_overrides("rectified_flow"),
            "model.velocity.hidden=64",
            "model.velocity.depth=2",
            "train.steps=300",
            "train.batch_size=256",
            "model.reflow=0",
        ]
    )
    train(cfg, tmp_path)
    model, toy = genlab.load_run(tmp_path), get_toy("moons")

    def kl() -> float:
        return kl_to_truth(model, toy, 2000, torch.Generator().manual_seed(1))["kl"]

    with_ema = kl()
    model.ema = None  # evaluate the raw trained weights
    raw = kl()
    torch.manual_seed(cfg.seed)  # as train() does: the run's own initial weights
    model = instantiate(cfg.model).eval()
    untrained = kl()
    assert with_ema < raw + 0.1, (with_ema, raw)
    assert with_ema < untrained - 0.3, (with_ema, untrained)


def _readme_budgets() -> dict[str, int]:
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `model=(\w+)` \| ([\d,]+) \|", text, re.MULTILINE)
    return {name: int(steps.replace(",", "")) for name, steps in rows}


def test_the_readme_states_each_models_own_training_budget(compose_cfg):
    budgets = _readme_budgets()
    shipped = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
    assert sorted(budgets) == shipped
    for name in shipped:
        assert compose_cfg([f"model={name}"]).train.steps == budgets[name], name


@pytest.mark.parametrize(
    "override,message",
    [
        ("+train.step=1", "unknown key train.step; did you mean train.steps?"),
        ("+eval.n_tset=5", "unknown key eval.n_tset; did you mean eval.n_test?"),
        ("+sed=3", "unknown key sed; did you mean seed?"),
        ("+plots.animat=false", "unknown key plots.animat; did you mean plots.animate?"),
    ],
)
def test_keys_added_with_plus_are_checked(override, message):
    cfg = compose_config([*tiny_overrides("nice"), override], hydra=True)
    runtime = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_additions(cfg, runtime.overrides.task, list(runtime.runtime.choices))
    check_additions(cfg, ["+story=diffusion"], ["story"])  # an added config group passes


@pytest.mark.parametrize("model", MODELS)
def test_nfe_per_training_step_is_reported_only_where_training_solves_an_ode(
    compose_cfg, tmp_path, model
):
    out = train(compose_cfg(tiny_overrides(model)), tmp_path)
    rows = (tmp_path / "history.csv").read_text().splitlines()[1:]
    nfe = [r.split(",")[-2:] for r in rows]
    if model == "cnf":
        assert out["train_nfe_first"] > 0 and all(int(f) > 0 for f, _ in nfe)
    else:
        assert "train_nfe_first" not in out and "train_nfe_last" not in out
        assert all(f == b == "" for f, b in nfe)


def test_a_short_run_logs_its_first_and_last_step(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "genlab",
        *tiny_overrides("nice"),
        "train.log_every=500",
        f"hydra.run.dir={tmp_path}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "genlab.log").read_text()
    assert "nice step 1/6" in log and "nice step 6/6" in log
    assert log.index("nice step 6/6") < log.index("evaluating")


def test_a_key_of_another_model_says_whose_it_is(tmp_path):
    cmd = [sys.executable, "-m", "genlab", "model.sampler.method=euler"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "genlab: model.sampler.method belongs to cnf, diffusion, distill, rectified_flow, "
        "schrodinger_bridge; "
        "model=nice has no such key"
    )
    assert not (tmp_path / "outputs").exists()


def test_the_metrics_file_holds_full_precision(compose_cfg, tmp_path):
    out = train(compose_cfg(tiny_overrides("nice", "checkerboard")), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == out
    assert saved["nice_floor"] == 1 - math.log(2)  # checkerboard's floor, exactly


def test_the_knobs_page_is_generated_from_the_configs():
    """docs/knobs.md is what ``python -m genlab.knobs`` prints: regenerate it after a change
    to conf/."""
    assert (ROOT / "docs" / "knobs.md").read_text() == knobs.markdown()
    assert "| `model.couplings` | `16` |" in knobs.markdown()  # NICE's, from its config
