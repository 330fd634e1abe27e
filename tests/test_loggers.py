"""Loggers: one interface, TensorBoard and MLflow read back through their own readers.

The extras are installed by ``make test`` (``genlab[tensorboard,mlflow]``); these tests fail,
rather than skip, without them, so CI cannot silently stop testing the loggers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genlab.errors import ConfigError
from genlab.loggers import Logger, flatten
from genlab.runner import train
from tests.conftest import tiny_overrides, tiny_sweep

ROOT = Path(__file__).resolve().parents[1]
EVERY = "logger.every=2"  # the tiny runs have 6 steps: rows at steps 2, 4 and 6

CALLS: list[tuple] = []


class Recorder(Logger):
    """A logger of one class and no YAML of its own (``logger._target_=...``): it records."""

    def open(self, run_dir, name, tags):
        CALLS.append(("open", name, dict(tags)))

    def log_params(self, params):
        CALLS.append(("params", dict(params)))

    def log_metrics(self, metrics, step):
        CALLS.append(("metrics", dict(metrics), step))

    def log_artifact(self, path):
        CALLS.append(("artifact", path.name))

    def close(self, status="FINISHED"):
        CALLS.append(("close", status))


@pytest.fixture
def recorder():
    CALLS.clear()
    yield [f"logger._target_={__name__}.Recorder", "+logger.every=2"]
    CALLS.clear()


def test_a_logger_is_one_class_fed_through_the_interface(compose_cfg, tmp_path, recorder):
    out = train(compose_cfg([*tiny_overrides("nice"), *recorder]), tmp_path)
    kinds = [c[0] for c in CALLS]
    assert kinds[:2] == ["open", "params"] and kinds[-1] == "close"
    tags = {"run_dir": str(tmp_path), "model": "nice", "data": "moons"}
    assert CALLS[0] == ("open", tmp_path.name, tags)
    assert CALLS[1][1]["train.steps"] == 6 and CALLS[1][1]["model.hidden"] == 16
    steps = [c[2] for c in CALLS if c[0] == "metrics" and "train/loss" in c[1]]
    assert steps == [2, 4, 6]
    first = next(c[1] for c in CALLS if c[0] == "metrics")
    assert set(first) == {"train/loss", "train/lr"}  # no NFE: NICE solves no ODE
    (final,) = [c for c in CALLS if c[0] == "metrics" and "metrics/kl" in c[1]]
    assert final[1]["metrics/kl"] == out["kl"] and final[2] == 6
    files = {c[1] for c in CALLS if c[0] == "artifact"}
    assert files == {"samples.png", "density.png", "metrics.json"}  # plots.animate=false
    assert CALLS[-1] == ("close", "FINISHED")


def test_a_failed_run_closes_its_logger_as_failed(compose_cfg, tmp_path, recorder, monkeypatch):
    from genlab import metrics

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(metrics, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train(compose_cfg([*tiny_overrides("nice"), *recorder]), tmp_path)
    assert CALLS[-1] == ("close", "FAILED")


def test_flatten_joins_keys_with_dots():
    nested = {"a": 1, "b": {"c": None, "d": {"e": "x"}}, "f": [1, 2]}
    assert flatten(nested) == {"a": 1, "b.c": None, "b.d.e": "x", "f": "[1, 2]"}


def test_tensorboard_scalars_images_and_hparams_read_back(compose_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = train(compose_cfg([*tiny_overrides("cnf"), "logger=tensorboard", EVERY]), tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    assert [e.step for e in events.Scalars("train/nfe_forward")] == [2, 4, 6]
    assert all(e.value > 0 for e in events.Scalars("train/lr"))
    (kl,) = events.Scalars("metrics/kl")
    assert kl.step == 6 and kl.value == np.float32(out["kl"])  # TensorBoard keeps float32
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert kl.value == np.float32(saved["kl"])
    assert {"samples", "density", "trajectories"} <= set(events.Tags()["images"])
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")


def mlflow_runs(store: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("genlab")
    return client, client.search_runs([experiment.experiment_id], order_by=["run_name"])


def test_mlflow_logs_one_run_per_sweep_job_tagged_with_the_sweep(tmp_path):
    """Two jobs at once (joblib) share a new SQLite store; each is one MLflow run with its
    params, its scalars by step, the KL of its metrics.json and its files."""
    sweep, store = tmp_path / "sweep", tmp_path / "mlruns" / "mlflow.db"
    cmd = tiny_sweep(
        "logger=mlflow",
        EVERY,
        f"logger.tracking_uri=sqlite:///{store}",
        f"logger.artifact_location={tmp_path / 'artifacts'}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "threads=1",
        f"hydra.sweep.dir={sweep}",
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = mlflow_runs(store)
    assert [r.info.run_name for r in runs] == ["0_nice_moons", "1_nice_8gaussians"]
    for run in runs:
        run_dir = sweep / run.info.run_name
        saved = json.loads((run_dir / "metrics.json").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweep"] == str(sweep) and run.data.tags["run_dir"] == str(run_dir)
        assert run.data.metrics["metrics/kl"] == saved["kl"]
        assert run.data.params["train.steps"] == "6" and run.data.params["threads"] == "1"
        losses = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in losses) == [2, 4, 6]
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"samples.png", "density.png", "metrics.json"} <= files
    assert not (tmp_path / "outputs").exists()  # everything went where the config said


@pytest.mark.parametrize("extra", ["tensorboard", "mlflow"])
def test_a_missing_extra_is_named_before_anything_is_written(
    compose_cfg, tmp_path, monkeypatch, extra
):
    monkeypatch.setitem(sys.modules, extra, None)  # as if not installed
    with pytest.raises(ConfigError) as error:
        train(compose_cfg([*tiny_overrides("nice"), f"logger={extra}"]), tmp_path / "run")
    assert str(error.value) == (
        f"logger={extra} needs the {extra} package, which is not installed: "
        f'pip install "genlab[{extra}]"'
    )
    assert not (tmp_path / "run").exists()


def test_the_command_names_a_missing_extra_in_one_line(tmp_path):
    hide = "import sys; sys.modules['mlflow'] = None; from genlab.cli import main; main()"
    cmd = [sys.executable, "-c", hide, "logger=mlflow"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "genlab: logger=mlflow needs the mlflow package, which is not installed: "
        'pip install "genlab[mlflow]"'
    )
    assert os.listdir(tmp_path) == []


def test_a_bad_logging_interval_is_one_line(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^logger.every must be an int >= 0, got -1$"):
        train(
            compose_cfg([*tiny_overrides("nice"), "logger=tensorboard", "logger.every=-1"]),
            tmp_path,
        )
