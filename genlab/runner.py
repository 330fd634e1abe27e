"""The composition root: build the toy and the model, fit, evaluate, draw, save.

``train(cfg)`` is a plain function (tests call it); :mod:`genlab.cli` is the Hydra app behind
the ``genlab`` command. This is the only module that knows configs, files, models and plots at
once, and it knows models only through their common interface.
"""

from __future__ import annotations

import copy
import logging
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from genlab import metrics, plots  # noqa: F401  (plots: the figures' module, patched in tests)
from genlab.checks import check_int
from genlab.errors import ConfigError, GenlabError, WriteError
from genlab.figures import RunFigures
from genlab.files import write_json
from genlab.fit import Fit
from genlab.loggers import Logger, RunLog
from genlab.memory import check_fits
from genlab.models.base import Model
from genlab.runs import CHECKPOINT, RunLock, check_resume, check_run_dir

__all__ = ["build", "build_logger", "train", "resolve_device"]

log = logging.getLogger("genlab")


def _absent_applies(absent: str) -> str:
    """What a setting the checkpoint lacks means for the resumed run: a model key only builds
    the model, whose weights and buffers (its Fourier frequencies, its starting maps) then come
    from the file; any other key applies as the config sets it."""
    if absent.startswith("model."):
        return (
            "the model is built with the config's value, then loads the file's weights and buffers"
        )
    return "the config's value applies"


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
    check_int("seed", cfg.seed, 0, MAX_SEED)
    check_int("train.data_seed", cfg.train.get("data_seed"), 0, MAX_SEED, none=True)
    check_int("threads", cfg.threads, 1, none=True)
    for key in ("plot_every", "checkpoint_every"):
        check_int(f"train.{key}", cfg.train[key], 0)
    e = cfg.eval
    check_int("eval.seed", e.seed, 0, MAX_SEED)
    check_int("eval.n_test", e.n_test, 2)  # a standard error needs two points
    check_int("eval.n_w2", e.n_w2, 2)
    check_int("eval.n_timing", e.n_timing, 1)
    check_int("eval.grid", e.grid, 16)  # flow.gif's p_t frames take an eighth of it, >= 2


#: The ``source`` group's default, the noise every model starts from.
GAUSSIAN_SOURCE = "genlab.models.base.StandardNormal"

#: The largest seed: numpy's global stream takes seeds below 2**32.
MAX_SEED = 2**32 - 1

#: Estimated bytes of memory per unit of each evaluation setting (measured on every toy:
#: sampling a toy takes up to 111 bytes a point, the test set, its log-densities and their
#: difference 40 more; POT's exact W2 holds 41 bytes per pair of points; a density grid's
#: points and values in both precisions 48 bytes a point; the timed samples, drawn in chunks,
#: 8 bytes a point, kept twice). Evaluation works in chunks otherwise, so these are what grows
#: with the setting.
EVAL_BYTES = {"n_test": 192, "n_w2": 48, "n_timing": 16, "grid": 48}
#: Training's peak memory against the autograd's saved tensors per sample (measured 0.89 to
#: 1.16 on every model at batch 100,000).
TRAIN_MEMORY_FACTOR = 1.25


def _saved_bytes(model: Model, x: Tensor) -> int:
    """Bytes the autograd keeps for the backward pass of ``model.loss(x)``."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(x)
    return total


def check_memory(cfg: DictConfig, model: Model, toy) -> None:
    """Refuse settings whose memory would not fit (:func:`genlab.memory.check_fits`), naming
    the key: the evaluation sizes by :data:`EVAL_BYTES` (``eval.n_w2`` by its square), and
    ``train.batch_size`` by what one training step of this model keeps for its backward pass,
    measured on two small batches (the difference, so the weights do not count) and scaled
    by :data:`TRAIN_MEMORY_FACTOR`. The measurement runs on a copy of the model, with the
    random state restored, so the run is the same with or without it."""
    e, fix = cfg.eval, "lower it"
    check_fits(f"eval.n_test={e.n_test}", e.n_test * EVAL_BYTES["n_test"], fix)
    check_fits(f"eval.n_w2={e.n_w2}", e.n_w2**2 * EVAL_BYTES["n_w2"], fix)
    check_fits(f"eval.n_timing={e.n_timing}", e.n_timing * EVAL_BYTES["n_timing"], fix)
    check_fits(f"eval.grid={e.grid}", e.grid**2 * EVAL_BYTES["grid"], fix)
    batch = cfg.train.batch_size
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        probe = copy.deepcopy(model)
        device, dtype = model.device, next(model.parameters()).dtype
        x = toy.sample(64, torch.Generator().manual_seed(0)).to(device, dtype)
        try:
            per_sample = (_saved_bytes(probe, x) - _saved_bytes(probe, x[:32])) / 32
        except Exception as err:  # noqa: BLE001 (a model whose loss needs other batches: no estimate)
            log.debug("no memory estimate for train.batch_size: %s", err)
            return
    need = TRAIN_MEMORY_FACTOR * batch * max(per_sample, 0)
    check_fits(f"train.batch_size={batch}", need, "lower it", model.device)


def _check_source(cfg: DictConfig) -> None:
    """Refuse ``source=<toy>`` for a model that starts from its own noise (no ``model.source``
    key): it would be ignored, and the run would not be what was asked for."""
    node = cfg.get("source")
    if "source" in cfg.model or node is None or node.get("_target_") == GAUSSIAN_SOURCE:
        return
    from genlab.configs import key_owners  # composes every model config: only on this error

    name = getattr(instantiate(node), "name", "") or node.get("_target_")
    raise ConfigError(
        f"source={name}: {cfg.model._target_.rsplit('.', 1)[-1]} starts from "
        f"N(0, I), not from another distribution; models with a source: "
        f"{', '.join(key_owners('source'))}"
    )


def _set_classes(cfg: DictConfig, toy) -> None:
    """``conditional=true``: give the model the toy's classes (``model.classes``), refusing a
    toy without classes and a model without a class input; a ``model.classes`` set by hand
    must be the toy's."""
    classes = cfg.model.get("classes", 0)
    if cfg.get("conditional"):
        if not toy.classes:
            raise ConfigError(
                f"conditional=true: {toy.name} has no classes; toys with classes: "
                f"{', '.join(_labelled_toys())}"
            )
        if "classes" not in cfg.model:
            from genlab.configs import key_owners  # composes every model config: on error only

            raise ConfigError(
                f"conditional=true: {cfg.model._target_.rsplit('.', 1)[-1]} takes no classes; "
                f"conditional models: {', '.join(key_owners('classes'))}"
            )
        cfg.model.classes = toy.classes
    elif classes and classes != toy.classes:
        raise ConfigError(f"model.classes={classes}, but {toy.name} has {toy.classes} classes")


def _labelled_toys() -> list[str]:
    from genlab.configs import data_options, get_toy

    return [name for name in data_options() if get_toy(name).classes]


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
        _check_source(cfg)
        _set_classes(cfg, toy)
        model: Model = instantiate(cfg.model).to(device)
        config = OmegaConf.to_container(cfg, resolve=True)
        check_memory(cfg, model, toy)
        fit = Fit(
            model,
            toy,
            cfg.train,
            run_dir,
            seed=cfg.seed if cfg.train.get("data_seed") is None else cfg.train.data_seed,
            config=config,
            eval_seed=cfg.eval.seed,
            n_report=cfg.eval.n_w2,
        )
    except InstantiationException as e:
        raise _config_error(e) from e
    except ValueError as e:
        raise e if isinstance(e, GenlabError) else ConfigError(str(e)) from e
    logger = build_logger(cfg)
    check_run_dir(run_dir, cfg.train.resume)
    if cfg.train.resume and (run_dir / CHECKPOINT).exists():
        for absent in check_resume(run_dir, config):
            if not preflight:
                log.warning("resuming %s: %s; %s", run_dir, absent, _absent_applies(absent))
        if preflight:
            fit.check_history()
    return toy, model, fit, logger


def _source_toy(model: Model):
    """The toy a transport starts from, ``None`` for its own noise (or a plug-in model's)."""
    return getattr(getattr(model, "prior", None), "distribution", None)


def _fit_and_evaluate(cfg, toy, model: Model, fit: Fit, figures: RunFigures, run_log) -> dict:
    """Train, evaluate, draw and write ``metrics.json``; returns the metrics."""
    device = model.device
    fit.run(hooks=[(cfg.train.plot_every, figures.progress), run_log.hook])

    source = getattr(model, "source", "gaussian")  # a plug-in model may not say
    out = {"model": model.name, "data": toy.name, "source": source}
    for key, each in (("data_constants", toy), ("source_constants", _source_toy(model))):
        if getattr(each, "custom", None):  # a toy off its default constants says which
            out[key] = each.custom
    out.update(seed=cfg.seed, device=str(device))
    if getattr(model, "classes", 0):
        out["classes"] = model.classes  # a conditional model, scored class by class too
    out["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)  # trained
    out.update(fit.summary())
    log.info("evaluating %s on %s", model.name, toy.name)
    e, start = cfg.eval, time.perf_counter()
    out.update(
        metrics.evaluate(model, toy, seed=e.seed, n_test=e.n_test, n_w2=e.n_w2, n_timing=e.n_timing)
    )
    figures.final(out["steps"], fit.records, out["w2_floor"], out)
    out["eval_seconds"] = time.perf_counter() - start  # the yardstick and every figure
    out["peak_memory_mb"] = metrics.peak_memory_mb(device)
    out["machine"] = metrics.machine(device)
    write_json(fit.run_dir / "metrics.json", out)
    run_log.finish(out)
    return out


def summary_line(out: dict) -> str:
    """The end-of-run line: the KL (for a model with a density), W2 beside its floor, the
    truth's cross-entropy of the samples beside its entropy, and the training time."""
    parts = []
    if "kl" in out:
        parts.append(f"nll {out['nll']:.4f}  kl {out['kl']:.4f} +- {out['kl_se']:.4f}")
    parts.append(f"w2 {out['w2']:.3f} (floor {out['w2_floor']:.3f})")
    if "cross_entropy" in out:
        parts.append(f"cross-entropy {out['cross_entropy']:.3f} (entropy {out['entropy']:.3f})")
    elif "off_support" in out:
        parts.append(f"cross-entropy inf ({100 * out['off_support']:.2f}% off the support)")
    parts.append(f"{out['train_seconds']:.1f} s")
    return "  ".join(parts)


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
    figures = RunFigures(
        model,
        toy,
        run_dir,
        seed=cfg.eval.seed,
        grid=cfg.eval.grid,
        animate=cfg.plots.animate,
        source=getattr(_source_toy(model), "label", getattr(model, "source", "gaussian")),
    )
    try:
        with RunLock(run_dir), RunLog(logger, fit, sweep) as run_log:
            out = _fit_and_evaluate(cfg, toy, model, fit, figures, run_log)
    except WriteError as e:
        fix = "free space" if e.full else "fix that"
        raise WriteError(f"{e}; {fit.resume_advice(fix)}", e.path, e.full) from e
    log.info("%s: %s  -> %s", figures.title, summary_line(out), run_dir)
    return out
