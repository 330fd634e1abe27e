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

from genlab.errors import RunDirError
from genlab.models.base import Model

__all__ = [
    "CHECKPOINT",
    "RUN_FILES",
    "ERROR_FILE",
    "check_run_dir",
    "save_checkpoint",
    "load_checkpoint",
    "load_run",
    "load_toy",
]

CHECKPOINT = "model.pt"
RUN_FILES = (CHECKPOINT, "metrics.json")  # a dir holding either holds a run
ERROR_FILE = "error.json"  # why a sweep job failed (written by the genlab command)


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


def check_run_dir(run_dir: str | Path, resume: bool) -> None:
    """Refuse to start a run in a dir that cannot be written, or that holds another run's
    outputs (unless resuming). Creates nothing.

    Raises:
        RunDirError: naming the dir and the file found, and how to resume or where else to go.
    """
    run_dir = Path(run_dir)
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a directory" if not existing.is_dir() else "is not writable"
        raise RunDirError(
            f"cannot write the run dir {run_dir}: {existing} {why}; choose another with "
            "hydra.run.dir=..."
        )
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not resume:
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(found)}); resume it with "
            f"train.resume=true hydra.run.dir={run_dir}, or write elsewhere: leave "
            "hydra.run.dir unset for a new unique dir"
        )
