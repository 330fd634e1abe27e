"""The composition root: build the toy and the model, fit, evaluate, draw, save.

``train(cfg)`` is a plain function (tests call it); ``main`` is the Hydra app behind the
``genlab`` command. This is the only module that knows configs, files, models and plots at
once, and it knows models only through their common interface.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genlab import metrics, plots  # noqa: F401  (plots: the figures' module, patched in tests)
from genlab.figures import RunFigures
from genlab.fit import Fit
from genlab.models.base import Model

__all__ = ["train", "main", "resolve_device"]

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
    bs = cfg.train.batch_size
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ValueError(f"train.batch_size must be an int >= 1, got {bs!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be an int, got {cfg.seed!r}")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise ValueError(f"threads must be an int >= 1 or null, got {cfg.threads!r}")
    for key in ("plot_every", "checkpoint_every"):
        v = cfg.train[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"train.{key} must be an int >= 0, got {v!r}")


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.data``, evaluate it and write every output to ``run_dir``.

    Arguments:
        cfg: the composed config (``conf/config.yaml`` and its groups).
        run_dir: where outputs go; defaults to Hydra's ``runtime.output_dir``.

    Returns:
        The metrics written to ``metrics.json``.
    """
    _check_config(cfg)
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    toy = instantiate(cfg.data)
    model: Model = instantiate(cfg.model).to(device)
    config = OmegaConf.to_container(cfg, resolve=True)
    fit = Fit(  # builds every stage's trainer, so bad settings fail before anything is written
        model,
        toy,
        cfg.train,
        run_dir,
        seed=cfg.seed,
        config=config,
        eval_seed=cfg.eval.seed,
        n_report=cfg.eval.n_w2,
    )
    figures = RunFigures(model, toy, run_dir, seed=cfg.eval.seed, grid=cfg.eval.grid)
    fit.run(hooks=[(cfg.train.plot_every, figures.progress)])

    out = {"model": model.name, "data": toy.name, "seed": cfg.seed, "device": str(device)}
    out["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out.update(fit.summary())
    log.info("evaluating %s on %s", model.name, toy.name)
    e = cfg.eval
    out.update(
        metrics.evaluate(model, toy, seed=e.seed, n_test=e.n_test, n_w2=e.n_w2, n_timing=e.n_timing)
    )
    figures.final(out["steps"], fit.records, out["w2_floor"])
    out["peak_memory_mb"] = metrics.peak_memory_mb(device)
    (run_dir / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
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


# conf/ sits at the repository root (the layout of shared/DESIGN.md) and is installed as the
# package genlab.conf, so one path serves editable and wheel installs alike.
@hydra.main(version_base="1.3", config_path="pkg://genlab.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """The ``genlab`` command: train one model (or, with ``-m``, a sweep)."""
    return train(cfg)["kl"]
