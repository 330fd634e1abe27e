"""Run dirs and checkpoints: a checkpoint is data, never code; every bad file fails clearly.

Each test starts from a real tiny run dir (trained once per model for the module) and alters
a copy of its ``model.pt``: crafted configs that would run code, broken files, checkpoints of
another model. ``load_run`` and resume (``train.resume=true``) must refuse each with one line
naming the file, and build nothing the caller did not trust.
"""

from __future__ import annotations

import copy
import re
import shutil
import sys

import pytest
import torch

import genlab
from genlab.figures import RunFigures
from genlab.runner import train
from genlab.runs import CHECKPOINT, CheckpointError
from tests.conftest import tiny_overrides


def no_figures(patch: pytest.MonkeyPatch) -> None:
    """Skip drawing a run's figures (test_cli.py checks them): these tests read checkpoints."""
    patch.setattr(RunFigures, "final", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def _runs() -> dict:
    return {}


@pytest.fixture
def trained(compose_cfg, tmp_path_factory, _runs):
    """``trained(model)``: a tiny run dir of ``model`` on moons, trained once per module."""

    def get(model: str):
        if model not in _runs:
            run_dir = tmp_path_factory.mktemp(model)
            with pytest.MonkeyPatch.context() as patch:
                no_figures(patch)
                train(compose_cfg(tiny_overrides(model)), run_dir)
            _runs[model] = run_dir
        return _runs[model]

    return get


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def read(run_dir) -> dict:
    return torch.load(run_dir / CHECKPOINT, weights_only=True)


def write(run_dir, ckpt) -> None:
    run_dir.mkdir(exist_ok=True)
    torch.save(ckpt, run_dir / CHECKPOINT)


def refused(call, *names):
    """Run ``call``, expect a one-line ``CheckpointError`` containing every one of ``names``."""
    with pytest.raises(CheckpointError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message
    return message


# ------------------------------------------------------------------------- inference-safe
@pytest.mark.parametrize("model", ["nice", "rectified_flow"])
def test_a_loaded_model_builds_no_autograd_graph(trained, model):
    """Sampling and log_prob of a loaded model keep no graph (an adaptive solve's graph is
    gigabytes); unfreezing it, as the README says for fine-tuning, brings gradients back."""
    loaded = genlab.load_run(trained(model))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.log_prob(x).requires_grad is False
    assert loaded.sample(16).requires_grad is False

    loaded.requires_grad_(True).train()
    assert loaded.log_prob(x).requires_grad is True
    loaded.loss(x).backward()
    assert any(p.grad is not None for p in loaded.parameters())


# ------------------------------------------------------------------------- data, never code
def unlink(path) -> dict:
    return {"_target_": "pathlib.Path.unlink", "_args_": [str(path)]}


def at_top(cfg, evil):
    cfg["model"] = evil


def in_velocity(cfg, evil):
    cfg["model"]["velocity"] = evil


def in_a_list(cfg, evil):
    cfg["model"]["sampler"]["_args_"] = [["nested", evil]]


def in_velocity_via_genlab(cfg, evil):
    # a genlab module's name, but pathlib's function: the name alone proves nothing
    cfg["model"]["velocity"] = {**evil, "_target_": "genlab.runs.Path.unlink"}


def a_genlab_function(cfg, evil):
    # genlab's own code, but a function that writes files, not a class to build
    cfg["model"]["velocity"] = {"_target_": "genlab.runs.save_checkpoint", "_args_": evil["_args_"]}


CRAFTED = {
    "top": (at_top, "pathlib.Path.unlink"),
    "nested": (in_velocity, "pathlib.Path.unlink"),
    "nested-in-a-list": (in_a_list, "pathlib.Path.unlink"),
    "genlab-name-for-pathlib": (in_velocity_via_genlab, "genlab.runs.Path.unlink"),
    "genlab-function": (a_genlab_function, "genlab.runs.save_checkpoint"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_target_is_refused_before_anything_runs(trained, tmp_path, case):
    """A checkpoint whose config names anything but genlab's classes builds nothing."""
    place, target = CRAFTED[case]
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    ckpt = read(trained("rectified_flow"))
    place(ckpt["config"], unlink(victim))
    run_dir = tmp_path / "run"
    write(run_dir, ckpt)

    message = refused(lambda: genlab.load_run(run_dir), run_dir / CHECKPOINT, repr(target))
    assert "genlab's own classes" in message
    assert victim.read_text() == "still here"


def test_a_crafted_data_config_is_refused_by_load_toy(trained, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    ckpt = read(trained("nice"))
    ckpt["config"]["data"] = unlink(victim)
    write(tmp_path / "run", ckpt)
    refused(
        lambda: genlab.load_toy(tmp_path / "run"), "'pathlib.Path.unlink'", 'trusted=["pathlib"]'
    )
    assert victim.exists()


@pytest.mark.parametrize(
    "value,names",
    [
        ("${oc.env:HOME}", ["interpolation", "config.model.couplings"]),
        (torch.zeros(2), ["config.model.couplings", "Tensor"]),
    ],
)
def test_a_config_holds_plain_resolved_values_only(trained, tmp_path, value, names):
    """``instantiate`` resolves ``${...}`` (``oc.env`` reads the environment): a stored config
    is resolved, so an interpolation in it was crafted."""
    ckpt = read(trained("nice"))
    ckpt["config"]["model"]["couplings"] = value
    write(tmp_path / "run", ckpt)
    refused(lambda: genlab.load_run(tmp_path / "run"), tmp_path / "run" / CHECKPOINT, *names)


PLUGIN = """\
import os

import torch
from torch import nn


class Shift(nn.Module):
    name = "shift"

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.dim = dim
        self.mu = nn.Parameter(torch.zeros(dim))

    def log_prob(self, x):
        return torch.distributions.Normal(self.mu, 1.0).log_prob(x).sum(-1)

    def sample(self, n, generator=None):
        return self.mu + torch.randn(n, self.dim, generator=generator)
"""


def test_a_plugin_model_loads_only_from_a_trusted_module(tmp_path, monkeypatch):
    """A model class of the user's own loads when its module (or a prefix) is trusted; until
    then its module is not even imported. What a trusted module imports is not trusted."""
    package = tmp_path / "genlab_plugin_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("genlab_plugin_pkg", "genlab_plugin_pkg.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    run_dir = tmp_path / "run"
    mu = torch.tensor([1.5, -0.5])
    config = {"model": {"_target_": "genlab_plugin_pkg.models.Shift", "dim": 2}}
    write(run_dir, {"model": {"mu": mu}, "config": config})

    refused(lambda: genlab.load_run(run_dir), "genlab_plugin_pkg.models.Shift", "trusted=[")
    assert "genlab_plugin_pkg" not in sys.modules

    for trusted in (("genlab_plugin_pkg",), ["genlab_plugin_pkg.models"], "genlab_plugin_pkg"):
        model = genlab.load_run(run_dir, trusted=trusted)
        assert type(model).__name__ == "Shift" and torch.equal(model.mu, mu)
        assert model.log_prob(torch.zeros(3, 2)).requires_grad is False
    assert "genlab_plugin_pkg.models" in sys.modules

    config["model"]["_target_"] = "genlab_plugin_pkg.models.os.remove"
    write(run_dir, {"model": {}, "config": config})
    refused(lambda: genlab.load_run(run_dir, trusted=["genlab_plugin_pkg"]), "outside the trusted")
    # a name that only begins like a trusted one is not within it
    refused(lambda: genlab.load_run(run_dir, trusted=["genlab_plugin"]), "genlab's own classes")


# ------------------------------------------------------------------------- broken files
def empty(path):
    path.write_bytes(b"")


def truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def foreign(path):
    torch.save({"foo": 1}, path)


def text(path):
    path.write_text("not a checkpoint\n")


BROKEN = {"empty": empty, "truncated": truncated, "foreign": foreign, "text": text}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_checkpoint_is_refused_by_load_run_and_by_resume(
    trained, compose_cfg, tmp_path, case
):
    """Empty, truncated or foreign ``model.pt``: one line naming the file, from ``load_run``
    and from ``train.resume=true``, which leaves the file as it was."""
    run_dir = copy_run(trained("nice"), tmp_path / "run")
    path = run_dir / CHECKPOINT
    BROKEN[case](path)
    before = path.read_bytes()

    refused(lambda: genlab.load_run(run_dir), path)
    cfg = compose_cfg([*tiny_overrides("nice"), "train.resume=true"])
    message = refused(lambda: train(cfg, run_dir), path)
    assert "restore it, or delete it and train again" in message
    assert path.read_bytes() == before


def test_resume_needs_every_part_of_a_checkpoint(trained, compose_cfg, tmp_path):
    """Weights and config suffice to load a model, not to resume its training."""
    run_dir = copy_run(trained("nice"), tmp_path / "run")
    ckpt = read(run_dir)
    write(run_dir, {"model": ckpt["model"], "config": ckpt["config"]})
    genlab.load_run(run_dir)
    cfg = compose_cfg([*tiny_overrides("nice"), "train.resume=true"])
    refused(lambda: train(cfg, run_dir), run_dir / CHECKPOINT, "'stage'")


# ------------------------------------------------------------------------- another model
def test_resuming_with_another_model_is_refused_naming_both(trained, compose_cfg, tmp_path):
    run_dir = copy_run(trained("nice"), tmp_path / "run")
    cfg = compose_cfg([*tiny_overrides("cnf"), "train.resume=true"])
    message = refused(
        lambda: train(cfg, run_dir), run_dir / CHECKPOINT, "genlab.models.NICE", "genlab.models.CNF"
    )
    assert "hydra.run.dir" in message


def test_resuming_with_another_size_names_the_setting(trained, compose_cfg, tmp_path):
    run_dir = copy_run(trained("nice"), tmp_path / "run")
    overrides = [o for o in tiny_overrides("nice") if not o.startswith("model.hidden")]
    cfg = compose_cfg([*overrides, "model.hidden=32", "train.resume=true"])
    message = refused(lambda: train(cfg, run_dir), run_dir / CHECKPOINT, "genlab.models.NICE")
    assert re.search(r"model\.hidden 16 in the file, 32 in the config", message)


@pytest.mark.parametrize(
    "change, named",
    [
        ("data=8gaussians", "'genlab.data.EightGaussians' in the config"),
        ("seed=1", "seed 0 in the file, 1 in the config"),
        ("train.lr=0.01", "train.lr 0.001 in the file, 0.01 in the config"),
        ("model.activation=relu", "model.activation 'tanh' in the file, 'relu' in the config"),
    ],
)
def test_resuming_with_other_settings_is_refused_naming_them(
    trained, compose_cfg, tmp_path, change, named
):
    """Weights of the right shapes are not enough: a run resumed on other data, with another
    seed, learning rate or activation would continue a run its config does not describe."""
    run_dir = copy_run(trained("nice"), tmp_path / "run")
    before = read(run_dir)
    key = change.split("=")[0]
    overrides = [o for o in tiny_overrides("nice") if o.split("=")[0] != key]
    cfg = compose_cfg([*overrides, change, "train.resume=true"])
    message = refused(lambda: train(cfg, run_dir), run_dir / CHECKPOINT, "genlab.models.NICE")
    assert named in message and "hydra.run.dir" in message, message
    after = read(run_dir)
    assert after["trainer"]["step"] == before["trainer"]["step"]


def test_resume_may_change_how_a_run_reports_and_how_long_it_trains(
    trained, compose_cfg, tmp_path, monkeypatch
):
    """Progress, logging, plots, evaluation, threads and a longer budget are free to change."""
    no_figures(monkeypatch)
    run_dir = copy_run(trained("nice"), tmp_path / "run")
    steps = read(run_dir)["trainer"]["step"]
    free = ["train.progress=true", "train.log_every=1", "eval.n_test=500", "threads=1"]
    cfg = compose_cfg(
        [*tiny_overrides("nice"), *free, f"train.steps={steps + 3}", "train.resume=true"]
    )
    assert train(cfg, run_dir)["steps"] == steps + 3


def test_a_setting_the_checkpoint_predates_applies_with_a_warning(
    trained, compose_cfg, tmp_path, caplog, monkeypatch
):
    """A checkpoint written before a setting existed resumes; the log says the config's value
    applies, and for a model key that the file's weights and buffers then load."""
    no_figures(monkeypatch)
    run_dir = copy_run(trained("nice"), tmp_path / "run")
    ckpt = copy.deepcopy(read(run_dir))
    del ckpt["config"]["train"]["warmup_steps"]
    del ckpt["config"]["model"]["fourier_draw"]
    write(run_dir, ckpt)
    cfg = compose_cfg([*tiny_overrides("nice"), "train.resume=true"])
    with caplog.at_level("WARNING", logger="genlab"):
        train(cfg, run_dir)
    assert (
        "train.warmup_steps absent in the file, 0 in the config; the config's value" in caplog.text
    )
    assert "model.fourier_draw absent in the file, 'random' in the config; the model is built" in (
        caplog.text
    )


def test_resuming_a_stage_the_model_lacks_is_refused(trained, compose_cfg, tmp_path):
    """A checkpoint from reflow round 1, resumed with a config that has no reflow."""
    run_dir = copy_run(trained("rectified_flow"), tmp_path / "run")
    ckpt = copy.deepcopy(read(run_dir))
    ckpt["stage"] = 1
    write(run_dir, ckpt)
    cfg = compose_cfg([*tiny_overrides("rectified_flow"), "train.resume=true"])
    refused(lambda: train(cfg, run_dir), run_dir / CHECKPOINT, "stage 1", "1 stage(s)")
