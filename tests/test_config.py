"""Hydra configs: every model x data pair composes and instantiates; bad input fails clearly."""

import inspect
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from genlab.loggers import Logger
from genlab.models.base import Model
from genlab.runner import train
from tests.conftest import DATASETS, MODELS, tiny_overrides

ROOT = Path(__file__).parents[1]
LOGGERS = sorted(p.stem for p in (ROOT / "conf" / "logger").glob("*.yaml"))


@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_every_pair_composes_and_instantiates(compose_cfg, model, data):
    cfg = compose_cfg([f"model={model}", f"data={data}"])
    toy = instantiate(cfg.data)
    net = instantiate(cfg.model)
    assert isinstance(net, Model) and net.name == model
    assert toy.name == data
    x = toy.sample(8, torch.Generator().manual_seed(0))
    if net.has_density:
        assert net.log_prob(x).shape == (8,)
    else:  # a one-step generator: refused, in words, never a made-up density
        with pytest.raises(NotImplementedError, match="has no density"):
            net.log_prob(x)
    assert net.sample(3).shape == (3, 2)


def test_defaults_are_nice_on_moons(compose_cfg):
    cfg = compose_cfg([])
    assert cfg.model._target_.endswith("NICE") and cfg.data._target_.endswith("Moons")
    assert cfg.device == "auto"
    assert type(instantiate(cfg.logger)) is Logger  # logger=none: files only
    assert cfg.plots.animate is True


def test_the_logger_group_offers_files_only_tensorboard_and_mlflow():
    assert LOGGERS == ["mlflow", "none", "tensorboard"]


@pytest.mark.parametrize("name", LOGGERS)
def test_every_logger_composes_and_builds_without_writing(compose_cfg, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default MLflow store would go
    logger = instantiate(compose_cfg([f"logger={name}"]).logger)
    assert isinstance(logger, Logger) and logger.every >= 0
    assert list(tmp_path.iterdir()) == []


def test_experiments_compose(compose_cfg):
    cfg = compose_cfg(["experiment=reflow"])
    assert cfg.model.reflow == 2 and cfg.data._target_.endswith("EightGaussians")


def test_compare_experiment_sweeps_everything_on_a_time_budget():
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="genlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=["experiment=compare"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = cfg.hydra.sweeper.params
    assert params.model == params.data == "glob(*)"  # every option of each group
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.plots.animate is False  # no flow.gif: every second goes to training
    assert params.seed == "0,1,2"  # three seeds a cell, for its median and range
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"].endswith("_seed${seed}")
    # every model gets the same minute a training stage; the distilled flow trains two (the
    # flow, then its distillation): with ten models and three seeds the sweep trains for
    # 132 minutes on two cores
    assert cfg.train.max_seconds == 60
    rounds = len(MODELS) + 1
    seconds = cfg.train.max_seconds * rounds * len(DATASETS) * 3 / cfg.hydra.launcher.n_jobs
    assert seconds <= 7920


def test_story_experiment_sweeps_diffusion_the_rectified_flow_and_the_one_step_generators():
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="genlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=["experiment=story"], return_hydra_config=True)
        assert cfg.hydra.mode.name == "MULTIRUN"
        roles = cfg.hydra.sweeper.params["+story"].split(",")
        jobs = {
            role: compose("config", overrides=["experiment=story", f"+story={role}"])
            for role in roles
        }
    GlobalHydra.instance().clear()
    assert roles == ["diffusion", "rectified_flow", "meanflow", "distill"]
    assert jobs["diffusion"].model._target_.endswith("Diffusion")
    assert jobs["rectified_flow"].model.reflow == 1
    assert jobs["meanflow"].model._target_.endswith("MeanFlow")
    assert jobs["distill"].model._target_.endswith("DistilledFlow")
    assert {c.data._target_ for c in jobs.values()} == {"genlab.data.EightGaussians"}


def test_mistyped_key_is_an_error(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="stepz"):
        compose_cfg(["train.stepz=3"])


@pytest.mark.parametrize("group,bad", [("data", "moon"), ("model", "flow")])
def test_unknown_choice_lists_the_options(compose_cfg, group, bad):
    with pytest.raises(MissingConfigException, match=f"{group}/{bad}") as err:
        compose_cfg([f"{group}={bad}"])
    assert "Available options" in str(err.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.steps=0", "train.steps must be an int >= 1, got 0"),
        ("train.steps=-5", "got -5"),
        ("train.batch_size=0", "train.batch_size must be an int >= 1, got 0"),
        ("train.lr=0", "train.lr must be > 0"),
        ("train.schedule=linear", "unknown schedule 'linear'"),
        ("device=tpu", "unknown device 'tpu'"),
    ],
)
def test_bad_values_fail_before_writing(compose_cfg, tmp_path, override, message):
    cfg = compose_cfg([*tiny_overrides("nice"), override])
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(cfg, run_dir)
    assert not run_dir.exists()


def _targets(node, where: str):
    """Every ``_target_`` node under ``node`` with its dotted path."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield where, node
        for key, value in node.items_ex(resolve=False):
            yield from _targets(value, f"{where}.{key}")


def test_every_model_config_has_one_shape():
    """A model config is a global package with the model under ``model:`` and its own budget
    under ``train:``, and nothing else."""
    for path in sorted((ROOT / "conf" / "model").glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("# @package _global_\n"), path.name
        node = OmegaConf.load(path)
        assert set(node) == {"model", "train"}, path.name
        assert "_target_" in node.model and isinstance(node.train.steps, int), path.name


def test_no_python_default_competes_with_a_model_config():
    """The classes a model config builds have, for every argument it sets, no default or the
    same one, so ``NICE()`` is the shipped NICE; building blocks that several models share
    with other settings (nets, solvers, samplers) are set in full by each config instead."""
    nodes = {
        f"{path.stem}{where}": node
        for path in sorted((ROOT / "conf" / "model").glob("*.yaml"))
        for where, node in _targets(OmegaConf.load(path).model, "")
    }
    users: dict[str, set[str]] = {}
    for name, node in nodes.items():
        users.setdefault(node._target_, set()).add(name.split(".")[0])
    for name, node in nodes.items():
        if len(users[node._target_]) > 1:
            continue  # a shared building block
        signature = inspect.signature(get_class(node._target_))
        for key, value in node.items_ex(resolve=False):
            if key == "_target_" or OmegaConf.is_interpolation(node, key):
                continue  # an interpolation (model.source: ${source}) is the main config's
            if isinstance(value, DictConfig):
                continue
            default = signature.parameters[key].default
            if default is not inspect.Parameter.empty:
                assert default == value, f"{name}.{key}: Python default {default!r}, YAML {value!r}"


def test_a_model_built_from_its_signature_is_the_shipped_one(compose_cfg):
    torch.manual_seed(0)
    shipped = instantiate(compose_cfg(["model=nice"]).model)
    torch.manual_seed(0)
    plain = get_class("genlab.models.NICE")()
    assert str(shipped) == str(plain)
    state = plain.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in shipped.state_dict().items())
