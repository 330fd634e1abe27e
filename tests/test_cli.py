"""End to end through the real command line, one tiny run per model, in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.plots import FRAMES
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]

COMMON = {
    "model.pt",
    "metrics.json",
    "history.csv",
    "samples.png",
    "density.png",
    "samples.npz",
    "genlab.log",
    ".hydra",
    "flow.gif",
}
CONTINUOUS = {"trajectories.png", "density_t.png"}
DISCRETE = {"nice", "realnvp", "glow", "nsf"}  # stacks of invertible layers: no ODE, no NFE
METRIC_KEYS = {
    "nll",
    "entropy",
    "test_entropy",
    "kl",
    "kl_se",
    "w2",
    "w2_floor",
    "params",
    "steps",
    "train_seconds",
    "steps_per_second",
    "eval_seconds",
    "sample_seconds",
    "peak_memory_mb",
    "machine",
}


# One torch thread per command: pytest -n 2 runs two tests at once on two cores, and a
# thread per core in each oversubscribes them (tiny nets gain nothing from a second thread).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(run_dir, overrides):
    cmd = [sys.executable, "-m", "genlab", *overrides, f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize(
    "model,extra,files",
    [
        ("nice", ["train.log_every=500"], COMMON),  # longer than the run: first and last
        ("realnvp", [], COMMON),
        ("glow", [], COMMON),
        ("nsf", [], COMMON),
        ("cnf", [], COMMON | CONTINUOUS),
        ("rectified_flow", ["model.reflow=1"], COMMON | CONTINUOUS | {"quality_vs_steps.png"}),
        ("diffusion", [], COMMON | CONTINUOUS | {"quality_vs_steps.png"}),
    ],
)
def test_cli_run_writes_every_output(tmp_path, model, extra, files):
    run_dir = tmp_path / model
    run_cli(run_dir, [*tiny_overrides(model), *extra, "plots.animate=true"])
    assert files <= {p.name for p in run_dir.iterdir()}
    assert not list(run_dir.glob("events.out.tfevents.*"))  # logger=none: files only
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["model"] == model and metrics["data"] == "moons"
    assert abs(metrics["kl"] - (metrics["nll"] - metrics["test_entropy"])) < 1e-9
    with Image.open(run_dir / "flow.gif") as gif:
        assert gif.n_frames == FRAMES <= 60
    assert (run_dir / "flow.gif").stat().st_size <= 2 * 2**20
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0].startswith("round,step,loss")
    assert history[0].endswith(",nfe_forward,nfe_backward")
    nfe = [row.split(",")[-2:] for row in history[1:]]
    loaded = genlab.load_run(run_dir)
    assert loaded.sample(5).shape == (5, 2)
    if model == "nice":  # a constant Jacobian determinant: its floor is reported beside it
        assert "nice_floor" in metrics
    elif model in DISCRETE:
        assert "nice_floor" not in metrics and "nfe" not in metrics
    else:
        assert metrics["nfe"] > 0
    # NFE per training step only where training solves an ODE
    if model == "cnf":
        assert metrics["train_nfe_first"] > 0 and all(int(f) > 0 for f, _ in nfe)
    else:
        assert "train_nfe_first" not in metrics and "train_nfe_last" not in metrics
        assert all(f == b == "" for f, b in nfe)
    if model == "nice":
        log = (run_dir / "genlab.log").read_text()
        assert "nice step 1/6" in log and "nice step 6/6" in log
        assert log.index("nice step 6/6") < log.index("evaluating")
    if model == "rectified_flow":
        assert metrics["steps"] == 6 + 4
        assert {"round0_straightness", "round1_w2_euler1", "round1_nfe_euler1"} <= set(metrics)
    if model == "diffusion":  # quality against steps at the end of the run, with its cost
        for sampler in ("ancestral", "ddim", "euler"):
            assert all(metrics[f"nfe_{sampler}{k}"] == k for k in (1, 2, 4, 10, 20, 100, 1000))
            assert all(metrics[f"w2_{sampler}{k}"] > 0 for k in (1, 10, 1000))


ONE_STEP = {"model.pt", "metrics.json", "history.csv", "samples.png", "samples.npz", "genlab.log"}


@pytest.mark.parametrize(
    "model,files",
    [
        ("meanflow", ONE_STEP | {"quality_vs_steps.png"}),
        ("distill", ONE_STEP | {"trajectories.png", "flow.gif", "quality_vs_steps.png"}),
    ],
)
def test_cli_run_of_a_one_step_generator_reports_no_kl_and_every_other_measure(
    tmp_path, model, files
):
    run_dir = tmp_path / model
    done = run_cli(run_dir, [*tiny_overrides(model), "plots.animate=true"])
    names = {p.name for p in run_dir.iterdir()}
    assert files <= names and not {"density.png", "density_t.png"} & names  # no density
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert not {"kl", "kl_se", "nll"} & set(metrics)  # never a made-up KL
    assert (METRIC_KEYS - {"kl", "kl_se", "nll"}) | {"off_support", "cross_entropy"} <= set(metrics)
    assert metrics["nfe"] == 1  # one network evaluation a sample
    assert metrics["w2_" + ("meanflow" if model == "meanflow" else "euler") + "1"] > 0
    assert "cross-entropy" in done.stderr + done.stdout and " kl " not in done.stderr
    with np.load(run_dir / "samples.npz") as f:
        assert bool(f["histogram"])  # the gallery's cell is its samples' histogram, named so
    if model == "distill":
        assert metrics["steps"] == 6 + 4  # the flow's steps, then the distillation's
    loaded = genlab.load_run(run_dir)
    assert loaded.sample(5).shape == (5, 2)


@pytest.mark.parametrize(
    "sampler",
    [
        ["model.sampler.method=dpmpp_2m", "model.sampler.spacing=logsnr", "model.sampler.steps=5"],
        ["model.sampler.method=heun", "model.sampler.spacing=karras", "model.sampler.churn=1"],
    ],
)
def test_cli_diffusion_samples_by_each_few_step_sampler(tmp_path, sampler):
    run_dir = tmp_path / "run"
    run_cli(run_dir, [*tiny_overrides("diffusion"), *sampler, "model.sampler.steps=5"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["nfe"] == (10 if "heun" in sampler[0] else 5)
    assert {"w2_dpmpp10", "w2_heun5", "nfe_heun5", "sec_heun5"} <= set(metrics)
    assert metrics["nfe_heun5"] == metrics["nfe_dpmpp10"] == 10  # scored at equal NFE


# A one-stage run stopped and resumed is compared with an uninterrupted one by the signal tests
# of test_lifecycle.py; here a run stopped in a later stage (a reflow round), and Glow, whose
# ActNorm layers initialise from the first batch: a resumed run must not initialise them again.
RESUME_CASES = {
    "glow": ("glow", [], 6),  # interrupted at step 6, resumed from its step 4
    # round 0 has 4 steps; interrupted in reflow round 1 at step 6, resumed from its step 4
    "rectified_flow": (
        "rectified_flow",
        ["train.steps=4", "model.reflow=1", "model.reflow_steps=8"],
        12,
    ),
    # labelled batches, label dropout and class-wise OT pairs from a source toy
    "conditional_flow_from_a_toy": (
        "rectified_flow",
        ["data=8gaussians", "conditional=true", "source=moons", "model.coupling=ot"],
        6,
    ),
    "schrodinger_bridge": ("schrodinger_bridge", ["source=8gaussians"], 6),  # Sinkhorn pairs
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_continues_exactly(compose_cfg, tmp_path, monkeypatch, case):
    """An interrupted run resumed from its checkpoint ends with the same weights."""
    from genlab import figures
    from genlab import runner as train_module

    # The figures come after the metrics and are checked above: only the training is compared.
    monkeypatch.setattr(figures.RunFigures, "final", lambda *args, **kwargs: None)
    model, extra, total = RESUME_CASES[case]
    overrides = [*tiny_overrides(model), *extra, "train.checkpoint_every=4"]
    straight = train_module.train(compose_cfg(overrides), tmp_path / "a")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(train_module.plots, "plot_samples", interrupt)
        train_module.train(compose_cfg([*overrides, "train.plot_every=6"]), tmp_path / "b")
    assert torch.load(tmp_path / "b" / "model.pt", weights_only=True)["trainer"]["step"] == 4
    resumed = train_module.train(compose_cfg([*overrides, "train.resume=true"]), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["nll"] == straight["nll"] and resumed["steps"] == straight["steps"] == total
    assert resumed["train_seconds"] > 0
    rows = [(tmp_path / r / "history.csv").read_text().splitlines() for r in ("a", "b")]
    assert len(rows[1]) == 1 + total
    without_seconds = [[line.split(",")[:4] + line.split(",")[5:] for line in r] for r in rows]
    assert rows[0][0].split(",")[4] == "seconds" and without_seconds[0] == without_seconds[1]


def test_help_teaches_the_command_line_before_the_config(compose_cfg, tmp_path):
    """genlab --help opens with what the lab does (each model's budget as its config sets
    it) and example commands, then the config groups and the config; it writes nothing."""
    cmd = [sys.executable, "-m", "genlab", "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert text.startswith("genlab: a small, exact, fast lab for flows")
    models = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
    budgets = {m: compose_cfg([f"model={m}"]).train.steps for m in models}
    assert budgets["nice"] == 5000 and budgets["cnf"] == 1000
    stated = ", ".join(f"{m} {budgets[m]:,}" for m in sorted(budgets))
    assert f"training budget (train.steps): {stated}." in text
    examples = text.index("== Examples ==")
    groups = text.index("== Config groups")
    assert examples < groups < text.index("== Config (")
    for example in ("genlab model=cnf data=8gaussians", "genlab -m model=nice,cnf,rectified_flow"):
        assert examples < text.index(example) < groups
    assert f"\nmodel: {', '.join(models)}\n" in text
    assert "\ndata: 2spirals, 8gaussians, checkerboard, circles, moons, pinwheel, rings," in text
    assert "\nlogger: mlflow, none, tensorboard\n" in text
    assert os.listdir(tmp_path) == []
