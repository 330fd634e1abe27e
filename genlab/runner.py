"""The composition root: build the toy and the model, fit, evaluate, draw, save.

``train(cfg)`` is a plain function (tests call it); :mod:`genlab.cli` is the Hydra app behind
the ``genlab`` command. This is the only module that knows configs, files, models and plots at
once, and it knows models only through their common interface.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genlab import metrics, plots  # noqa: F401  (plots: the figures' module, patched in tests)
from genlab.checks import check_int
from genlab.errors import ConfigError
from genlab.figures import RunFigures
from genlab.fit import Fit
from genlab.loggers import Logger, RunLog
from genlab.models.base import Model
from genlab.runs import CHECKPOINT, check_resume, check_run_dir

__all__ = ["build", "build_logger", "train", "resolve_device"]

log = logging.getLogger("genlab")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available; use device=auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds the global numpy stream users may rely on)
    torch.manual_seed(seed)


def _check_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg.train, "steps"):
        raise ConfigError(
            "train.steps is not set: a model config sets its own training budget under train: "
            "(conf/model/*.yaml), or give one: train.steps=N"
        )
    check_int("train.batch_size", cfg.train.batch_size, 1)
    check_int("seed", cfg.seed)
    check_int("threads", cfg.threads, 1, none=True)
    for key in ("plot_every", "checkpoint_every"):
        check_int(f"train.{key}", cfg.train[key], 0)


def _config_error(e: InstantiationException) -> ConfigError:
    """Hydra's instantiation error as one line naming the config key (a :class:`ConfigError`
    raised by the object itself already names it)."""
    if isinstance(e.__cause__, ConfigError):
        return e.__cause__
    key = re.search(r"^full_key: (.+)$", str(e), re.MULTILINE)
    where = key.group(1) if key else "config"
    return ConfigError(f"{where}: {e.__cause__ or str(e).splitlines()[0]}")


def build_logger(cfg: DictConfig) -> Logger:
    """The run's logger from the ``logger`` group (nothing is written until it is opened).

    Raises:
        ConfigError: a bad logger setting, or the backend's extra is not installed.
    """
    try:
        return instantiate(cfg.logger)
    except InstantiationException as e:
        raise _config_error(e) from e


def build(
    cfg: DictConfig, run_dir: Path, preflight: bool = False
) -> tuple[object, Model, Fit, Logger]:
    """Check the config, instantiate the toy, the model and the logger and prepare the fit.

    Writes nothing: every setting is checked here (each stage's trainer is built), and so is
    the run dir, before a file is touched. ``preflight``: a check before the run, which leaves
    the run's warnings to the run itself (they would be logged twice).

    Raises:
        ConfigError: one line naming the bad key or value.
        RunDirError: the run dir holds another run (and ``train.resume`` is false).
        CheckpointError: on ``train.resume``, the run dir's checkpoint is broken, or holds a
            run trained with other settings (see :func:`genlab.runs.check_resume`).
    """
    try:
        _check_config(cfg)
        device = resolve_device(cfg.device)
        toy = instantiate(cfg.data)
        model: Model = instantiate(cfg.model).to(device)
        config = OmegaConf.to_container(cfg, resolve=True)
        fit = Fit(
            model,
            toy,
            cfg.train,
            run_dir,
            seed=cfg.seed,
            config=config,
            eval_seed=cfg.eval.seed,
            n_report=cfg.eval.n_w2,
        )
    except InstantiationException as e:
        raise _config_error(e) from e
    except ValueError as e:
        raise e if isinstance(e, ConfigError) else ConfigError(str(e)) from e
    logger = build_logger(cfg)
    check_run_dir(run_dir, cfg.train.resume)
    if cfg.train.resume and (run_dir / CHECKPOINT).exists():
        for absent in check_resume(run_dir, config):
            if not preflight:
                log.warning("resuming %s: %s; the config's value applies", run_dir, absent)
    return toy, model, fit, logger


def train(cfg: DictConfig, run_dir: str | Path | None = None, sweep: str | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.data``, evaluate it and write every output to ``run_dir``.

    Arguments:
        cfg: the composed config (``conf/config.yaml`` and its groups).
        run_dir: where outputs go; defaults to Hydra's ``runtime.output_dir``.
        sweep: the sweep dir when the run is a job of one (the loggers tag the run with it).

    Returns:
        The metrics written to ``metrics.json``.
    """
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    if cfg.get("threads") is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    toy, model, fit, logger = build(cfg, run_dir)
    device = model.device
    figures = RunFigures(
        model, toy, run_dir, seed=cfg.eval.seed, grid=cfg.eval.grid, animate=cfg.plots.animate
    )
    with RunLog(logger, fit, sweep) as run_log:
        fit.run(hooks=[(cfg.train.plot_every, figures.progress), run_log.hook])

        out = {"model": model.name, "data": toy.name, "seed": cfg.seed, "device": str(device)}
        out["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)  # trained
        out.update(fit.summary())
        log.info("evaluating %s on %s", model.name, toy.name)
        e = cfg.eval
        out.update(
            metrics.evaluate(
                model, toy, seed=e.seed, n_test=e.n_test, n_w2=e.n_w2, n_timing=e.n_timing
            )
        )
        figures.final(out["steps"], fit.records, out["w2_floor"], out)
        out["peak_memory_mb"] = metrics.peak_memory_mb(device)
        out["machine"] = metrics.machine(device)
        (run_dir / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
        run_log.finish(out)
    log.info(
        "%s: nll %.4f  kl %.4f +- %.4f  w2 %.3f (floor %.3f)  %.1f s  -> %s",
        figures.title,
        out["nll"],
        out["kl"],
        out["kl_se"],
        out["w2"],
        out["w2_floor"],
        out["train_seconds"],
        run_dir,
    )
    return out
