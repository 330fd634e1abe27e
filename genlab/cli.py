"""The ``genlab`` command: the Hydra app around :func:`genlab.train.train`.

What the command adds to ``train``:

- **Run dirs that never collide.** The default run dir ends in a random id from the
  ``genlab.uid`` resolver (``outputs/<date>/<time>-<id>``), so runs started in the same second,
  from one shell or from many machines on a shared file system, never share a dir; a dir that
  already holds a run is refused unless ``train.resume=true``.
- **Checks before anything is written.** :class:`Preflight`, a Hydra callback, builds the run
  (every setting, the device, the run dir) before Hydra creates the run dir; a bad setting
  ends the command with one line and exit code 2, leaving no files.
- **One-line errors.** A :class:`genlab.errors.GenlabError` prints its message alone and exits
  non-zero; a bug keeps its traceback, and ``HYDRA_FULL_ERROR=1`` shows every traceback.
- **Sweeps that survive a failing job.** In a multirun, a job that fails writes
  ``error.json`` (its reason) into its dir and the sweep goes on; the sweep report lists it.
- **Graceful stop.** SIGTERM or SIGINT writes a checkpoint and exits with 128 + the signal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sys
import traceback
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from genlab.errors import GenlabError, RunDirError
from genlab.fit import Stopped
from genlab.runs import ERROR_FILE, RUN_FILES, check_run_dir
from genlab.train import build, build_logger, train

__all__ = ["main", "app", "Preflight"]

log = logging.getLogger("genlab")

# A random id per composed config (cached: every use in one config gets the same value).
OmegaConf.register_new_resolver(
    "genlab.uid", lambda: secrets.token_hex(3), use_cache=True, replace=True
)


def training_budgets() -> str:
    """Each shipped model's own ``train.steps`` (``cnf 1,000, nice 5,000, ...``), read from
    its config or, where it sets none, from config.yaml's: the budgets ``genlab --help``
    states."""
    conf = resources.files("genlab.conf")
    default = OmegaConf.load(conf.joinpath("config.yaml").open()).train.steps
    budgets = {}
    for name, node in _model_files().items():
        steps = default if "_target_" in node else OmegaConf.select(node, "train.steps")
        budgets[name] = steps or default
    return ", ".join(f"{name} {steps:,}" for name, steps in budgets.items())


OmegaConf.register_new_resolver("genlab.budgets", training_budgets, replace=True)


class OneLine(CompactHydraException):
    """Hydra prints a compact exception's message alone, with no traceback."""


def _refuse(error: Exception) -> None:
    """End the command before Hydra writes anything: one line, exit code 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error)
    print(f"genlab: {error}", file=sys.stderr)
    sys.exit(2)


def _task_config(config: DictConfig) -> DictConfig:
    task = config.copy()
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


class Preflight(Callback):
    """Hydra callback: check a run, or a sweep dir, before Hydra creates any file."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            build(_task_config(config), Path(config.hydra.run.dir), preflight=True)
        except GenlabError as e:
            _refuse(e)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        try:
            build_logger(config)  # a missing extra stops the sweep before it starts
            check_run_dir(sweep, resume=True)  # writable
            taken = [p for name in RUN_FILES for p in sweep.glob(f"*/{name}")]
            if taken and not config.train.resume:
                raise RunDirError(
                    f"{sweep} already holds runs (e.g. {taken[0]}); resume them with "
                    f"train.resume=true hydra.sweep.dir={sweep}, or leave hydra.sweep.dir unset "
                    "for a new unique dir"
                )
        except GenlabError as e:
            _refuse(e)


def _log_to_files(message: str) -> None:
    """Put ``message`` in the run's log file only (Hydra prints it on the console)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _record_failure(run_dir: Path, error: Exception) -> None:
    """A failed sweep job: log why (with the traceback of a bug) and write ``error.json``."""
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if isinstance(error, GenlabError):
        log.error("job failed: %s", reason)
    else:
        log.exception("job failed: %s", reason)
    choices = HydraConfig.get().runtime.choices
    failure = {
        "model": choices.get("model"),
        "data": choices.get("data"),
        "error": reason,
        "job": HydraConfig.get().job.num,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).write_text(json.dumps(failure, indent=2) + "\n")


# conf/ sits at the repository root (the layout of shared/DESIGN.md) and is installed as the
# package genlab.conf, so one path serves editable and wheel installs alike.
@hydra.main(version_base="1.3", config_path="pkg://genlab.conf", config_name="config")
def app(cfg: DictConfig) -> float:
    """Train one model (or, with ``-m``, one job of a sweep); returns its KL."""
    hydra_cfg = HydraConfig.get()
    try:
        return train(cfg)["kl"]
    except Stopped as e:
        sys.exit(128 + e.signum)  # the checkpoint is written and the reason logged
    except Exception as e:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            _record_failure(Path(hydra_cfg.runtime.output_dir), e)
            return math.nan
        if isinstance(e, GenlabError):
            _log_to_files(str(e))
            raise OneLine(f"genlab: {e}") from e
        raise


def _model_files() -> dict[str, DictConfig]:
    """Each shipped model group option's YAML, as loaded (a model node, or a global package
    with ``model`` and its own ``train``)."""
    out = {}
    for entry in sorted(resources.files("genlab.conf").joinpath("model").iterdir(), key=str):
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = OmegaConf.load(entry.open())
    return out


def _model_configs() -> dict[str, DictConfig]:
    """Each model group option's ``model`` node, from the shipped configs."""
    return {
        name: node if "_target_" in node else node.model for name, node in _model_files().items()
    }


def _chosen(group: str, argv: list[str]) -> str:
    """The option of ``group`` a command line picks (its last ``group=...``), else the
    experiment's override, else the default of config.yaml."""
    picked = [a.split("=", 1)[1] for a in argv if a.startswith(f"{group}=")]
    if picked:
        return picked[-1]
    conf = resources.files("genlab.conf")
    for arg in reversed(argv):
        if arg.startswith("experiment="):
            name = arg.split("=", 1)[1]
            experiment = OmegaConf.load(conf.joinpath("experiment", f"{name}.yaml").open())
            for entry in experiment.get("defaults", []):
                if isinstance(entry, DictConfig) and f"override /{group}" in entry:
                    return entry[f"override /{group}"]
    base = OmegaConf.load(conf.joinpath("config.yaml").open())
    return next(e[group] for e in base.defaults if isinstance(e, DictConfig) and group in e)


def foreign_key_hint(argv: list[str]) -> str | None:
    """Name the models a mistyped ``model.<key>`` override belongs to, when the chosen model
    has no such key (``model.sampler`` on NICE belongs to the ODE models)."""
    try:
        configs, chosen = _model_configs(), _chosen("model", argv)
    except (OSError, ValueError, StopIteration, KeyError):
        return None
    missing = object()
    for arg in argv:
        if not arg.startswith("model.") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0][len("model.") :]
        owners = [
            n
            for n, c in configs.items()
            if OmegaConf.select(c, key, default=missing) is not missing
        ]
        if owners and chosen not in owners:
            owned = ", ".join(owners)
            return f"genlab: model.{key} belongs to {owned}; model={chosen} has no such key"
    return None


def main() -> None:
    """The ``genlab`` console script (also ``python -m genlab``)."""
    try:
        app()
    except SystemExit as e:
        if e.code not in (0, None) and (hint := foreign_key_hint(sys.argv[1:])):
            print(hint, file=sys.stderr)
        raise
