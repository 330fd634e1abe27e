"""The lab from Python: train a run, load a finished one, sweep, with what the CLI does.

``genlab.train(model="nice", data="moons", overrides=["train.steps=500"])`` composes the same
config as ``genlab model=nice data=moons train.steps=500`` through Hydra's compose API, checks
it the same way (the same one-line :class:`genlab.errors.GenlabError` s), writes the same run
dir (``.hydra/``, ``genlab.log``, the figures, ``metrics.json``, ``model.pt``) and returns a
:class:`Run`. Overrides are the command line's own strings, so anything the CLI takes works
here. ``genlab.sweep`` runs the real ``genlab -m`` command, on the same launchers, and returns
its runs and leaderboard rows.

Example:
    >>> run = genlab.train(model="nice", data="moons", overrides=["train.steps=500"])
    >>> run.metrics["kl"], run.figures["samples"]
    >>> x = run.model.sample(1000)
    >>> again = genlab.load(run.dir)
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict, read_write

from genlab.configs import check_additions, compose_config
from genlab.files import ENCODING, read_text, write_text
from genlab.models.base import Model
from genlab.runs import CHECKPOINT, RunLock, load_run, load_toy

__all__ = ["Run", "Sweep", "train", "load", "sweep"]

log = logging.getLogger("genlab")


@dataclass(frozen=True)
class Run:
    """A finished run, read from its run dir; each part is read when first asked for.

    Attributes:
        dir: the run dir.
        trusted: modules whose classes the checkpoint may build besides genlab's (a plug-in
            model's), as in :func:`genlab.load_run`.
    """

    dir: Path
    trusted: tuple[str, ...] = field(default=(), compare=False)

    @cached_property
    def model(self) -> Model:
        """The trained model, in eval mode with frozen parameters (:func:`genlab.load_run`)."""
        return load_run(self.dir, trusted=self.trusted)

    @cached_property
    def toy(self):
        """The data set it was trained on (:func:`genlab.load_toy`)."""
        return load_toy(self.dir, trusted=self.trusted)

    @cached_property
    def metrics(self) -> dict:
        """``metrics.json``: the yardstick's numbers (keys in docs/yardstick.md)."""
        return json.loads(read_text(self.dir / "metrics.json"))

    @cached_property
    def history(self) -> list[dict]:
        """``history.csv``: one row per training step (round, step, loss, lr, seconds, NFE)."""
        with open(self.dir / "history.csv", newline="", encoding=ENCODING) as f:
            return list(csv.DictReader(f))

    @property
    def figures(self) -> dict[str, Path]:
        """The run's figures by name (``samples``, ``density``, ``flow``, ...): their paths."""
        paths = [*sorted(self.dir.glob("*.png")), *sorted(self.dir.glob("*.gif"))]
        return {p.stem: p for p in paths}

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"


@dataclass(frozen=True)
class Sweep:
    """A finished sweep: its dir, its runs and the leaderboard's rows.

    Attributes:
        dir: the sweep dir (``leaderboard.md``, ``gallery.png`` and one dir per run).
        runs: its runs, in the leaderboard's order.
        leaderboard: one dict per run: data, model, kl, kl_se, nice_floor, w2, w2_floor,
            costs, as ``leaderboard.csv`` holds them (numbers as numbers).
    """

    dir: Path
    runs: list[Run]
    leaderboard: list[dict]


def load(run_dir: str | Path, trusted: Sequence[str] = ()) -> Run:
    """The :class:`Run` of a finished run dir (one with ``model.pt`` and ``metrics.json``).

    Raises:
        FileNotFoundError: the dir holds no finished run.
    """
    run_dir = Path(run_dir)
    missing = [n for n in (CHECKPOINT, "metrics.json") if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} holds no finished run: no {', '.join(missing)}")
    return Run(run_dir, tuple(trusted))


def _save_hydra_dir(run_dir: Path, cfg, overrides: list[str]) -> None:
    """``.hydra/config.yaml`` and ``overrides.yaml``, as the CLI leaves them."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))


def train(
    model: str | None = None,
    data: str | None = None,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
) -> Run:
    """Train one run as ``genlab`` does, and return it.

    Arguments:
        model, data: the config group options (``nice``, ``moons``); ``None``: the default,
            or what an ``experiment=...`` override chooses.
        overrides: the command line's own strings (``["train.steps=500", "model.couplings=8",
            "seed=1"]``).
        run_dir: where the run goes; ``None``: a new unique dir under ``outputs/``, as the CLI
            makes (``hydra.run.dir=...`` in ``overrides`` also works).

    Returns:
        The finished :class:`Run`.

    Raises:
        genlab.errors.GenlabError: a bad setting or run dir, in the CLI's one line; nothing is
            written then.
        hydra.errors.HydraException: an override Hydra cannot compose (unknown key or option).
    """
    import genlab.cli  # noqa: F401  (registers the run dir's genlab.uid resolver)
    from genlab.runner import build
    from genlab.runner import train as train_cfg

    chosen = [f"model={model}"] * (model is not None) + [f"data={data}"] * (data is not None)
    overrides = [*chosen, *overrides]
    cfg = compose_config(overrides, hydra=True)
    runtime = cfg.hydra
    where = Path(run_dir) if run_dir is not None else Path(runtime.run.dir)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    check_additions(cfg, overrides, list(runtime.runtime.choices))
    build(cfg, where, preflight=True)  # every check before a file is written
    with RunLock(where):  # the dir is this process's before its first file
        _train_in(where, cfg, overrides, train_cfg)
    return Run(where)


def _train_in(where: Path, cfg, overrides: list[str], train_cfg) -> None:
    """Write the run dir as the command does: ``.hydra/``, ``genlab.log``, then the run."""
    _save_hydra_dir(where, cfg, overrides)
    handler = logging.FileHandler(where / "genlab.log", encoding=ENCODING)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        train_cfg(cfg, where)
    finally:
        root.removeHandler(handler)
        handler.close()
        log.setLevel(previous)


def _number(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value or None


def sweep(
    model: Sequence[str] | str | None = None,
    data: Sequence[str] | str | None = None,
    overrides: Sequence[str] = (),
    sweep_dir: str | Path | None = None,
    launcher: str | None = None,
) -> Sweep:
    """Run ``genlab -m`` over every ``model`` x ``data`` pair and return the sweep.

    Arguments:
        model, data: the options to sweep (a list, or one name; ``None``: the default).
        overrides: further command-line strings, sweeps included (``seed=0,1,2``).
        sweep_dir: where the sweep goes (``None``: a new unique dir under
            ``outputs/multirun/``).
        launcher: a Hydra launcher (``joblib``, ``submitit_local``, ``slurm``); ``None``: one
            job after another in one process.

    Returns:
        The finished :class:`Sweep` with its runs and leaderboard rows.

    Raises:
        RuntimeError: the command failed (a bad setting, or a failed job), with its last line.
    """
    import genlab.cli  # noqa: F401  (registers the sweep dir's genlab.uid resolver)
    from genlab.report import collect

    args = []
    for group, options in (("model", model), ("data", data)):
        if options is not None:
            names = [options] if isinstance(options, str) else list(options)
            args.append(f"{group}={','.join(names)}")
    if launcher is not None:
        args.append(f"hydra/launcher={launcher}")
    args.extend(overrides)
    if sweep_dir is None:  # the default sweep dir, composed without the swept values
        parsed = OverridesParser.create().parse_overrides(args)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        sweep_dir = compose_config(fixed, hydra=True).hydra.sweep.dir
    args.append(f"hydra.sweep.dir={sweep_dir}")
    cmd = [sys.executable, "-m", "genlab", "-m", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise RuntimeError(f"genlab -m {' '.join(args)} failed: {last[-1] if last else ''}")
    root = Path(sweep_dir)
    rows, _ = collect(root)
    with open(root / "leaderboard.csv", newline="", encoding=ENCODING) as f:
        board = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return Sweep(root, [Run(root / r["run"]) for r in rows], board)
