"""Run directories and checkpoints.

A checkpoint ``model.pt`` describes itself: the model's ``state_dict``, the resolved config,
the training round and step, the trainer's state and the random states, so that a run can
resume and ``load_run`` can rebuild the model from the run dir alone. Everything in it is a
tensor or a plain container, so it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genlab.models.base import Model

__all__ = ["CHECKPOINT", "save_checkpoint", "load_checkpoint", "load_run", "load_toy"]

CHECKPOINT = "model.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a crash never leaves half a checkpoint)."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read ``model.pt`` from ``run_dir`` with ``weights_only=True``."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}: is {run_dir} a genlab run dir?")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Model:
    """Rebuild the trained model of a run dir, in eval mode on ``device``.

    Example:
        >>> model = genlab.load_run("outputs/2026-11-25/10-00-00")
        >>> x = model.sample(1000)
    """
    ckpt = load_checkpoint(run_dir, map_location=device)
    model = instantiate(OmegaConf.create(ckpt["config"]["model"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def load_toy(run_dir: str | Path):
    """The data set a run was trained on."""
    ckpt = load_checkpoint(run_dir)
    return instantiate(OmegaConf.create(ckpt["config"]["data"]))
