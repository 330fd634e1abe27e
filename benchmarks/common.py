"""What the benchmarks share: one genlab run through the same code path as the ``genlab``
command, quiet, in a temporary run dir, returning its metrics."""

from __future__ import annotations

import tempfile
from pathlib import Path

#: No progress bar, log lines or checkpoints: a benchmark times training, not bookkeeping.
QUIET = ("train.progress=false", "train.log_every=0", "train.checkpoint_every=0")
#: Runs under a wall-clock budget: the budget binds first (the cosine schedule follows it).
BY_TIME = ("threads=1", "train.steps=10000000", "plots.animate=false")


def train_run(model: str, data: str, seed: int, overrides: list[str]) -> dict:
    """Train ``model`` on ``data`` from ``seed`` with ``conf/`` and ``overrides`` (which come
    last, so they win); returns the run's metrics (``metrics.json``)."""
    from hydra import compose, initialize_config_module

    from genlab.runner import train

    settings = [f"model={model}", f"data={data}", f"seed={seed}", *QUIET, *overrides]
    with initialize_config_module(config_module="genlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=settings)
    with tempfile.TemporaryDirectory() as tmp:
        return train(cfg, Path(tmp) / "run")
