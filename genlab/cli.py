"""The ``genlab`` command: the Hydra app around :func:`genlab.runner.train`.

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

import logging
import math
import os
import secrets
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import CompactHydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from genlab.configs import check_additions, compose_config, key_owners, model_options
from genlab.errors import GenlabError, RunDirError, RunInUse
from genlab.files import write_json
from genlab.fit import Stopped
from genlab.runner import build, build_logger, train
from genlab.runs import ERROR_FILE, RUN_FILES, RunLock, check_run_dir

__all__ = ["main", "app", "Preflight"]

log = logging.getLogger("genlab")

# A random id per composed config (cached: every use in one config gets the same value).
OmegaConf.register_new_resolver(
    "genlab.uid", lambda: secrets.token_hex(3), use_cache=True, replace=True
)


_budgets: list[str] = []  # computed once per process; empty while being computed


def training_budgets() -> str:
    """Each model's own ``train.steps`` (``cnf 1,000, diffusion 20,000, ...``), composed as a
    run of that model would be: the budgets ``genlab --help`` states.

    Hydra resolves the help text whenever it composes a config, so the composes below would
    call this again: the inner calls get a placeholder, and the result is kept for the process.
    """
    if not _budgets:
        _budgets.append("(being read)")
        budgets = {name: compose_config([f"model={name}"]).train.steps for name in model_options()}
        _budgets[0] = ", ".join(f"{name} {steps:,}" for name, steps in budgets.items())
    return _budgets[0]


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
            task = _task_config(config)
            runtime = config.hydra
            check_additions(task, runtime.overrides.task, list(runtime.runtime.choices))
            run_dir = Path(config.hydra.run.dir)
            build(task, run_dir, preflight=True)
            # The dir is this process's from here on: before Hydra writes .hydra/ into it
            self._lock = RunLock(run_dir).acquire()
        except GenlabError as e:
            _refuse(e)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        try:
            build_logger(config)  # a missing extra stops the sweep before it starts
            check_run_dir(sweep, resume=True, key="hydra.sweep.dir")  # writable, not in use
            taken = [p for name in RUN_FILES for p in sweep.glob(f"*/{name}")]
            if taken and not config.train.resume:
                raise RunDirError(
                    f"{sweep} already holds runs (e.g. {taken[0]}); resume them with "
                    f"train.resume=true hydra.sweep.dir={sweep}, or leave hydra.sweep.dir unset "
                    "for a new unique dir"
                )
            self._lock = RunLock(sweep, "hydra.sweep.dir").acquire()  # one sweep per dir
        except GenlabError as e:
            _refuse(e)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.on_run_end(config)


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
    if isinstance(error, RunInUse):
        return  # the dir is another process's run: writing error.json would mark it failed
    choices = HydraConfig.get().runtime.choices
    failure = {
        "model": choices.get("model"),
        "data": choices.get("data"),
        "error": reason,
        "job": HydraConfig.get().job.num,
    }
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / ERROR_FILE, failure)
    except OSError as e:  # a full disk: the log (and the sweep's exit code) still tell
        log.error("could not record the failure in %s: %s", run_dir / ERROR_FILE, e)


# conf/ sits at the repository root and is installed as the package genlab.conf, so one path
# serves editable and wheel installs alike.
@hydra.main(version_base="1.3", config_path="pkg://genlab.conf", config_name="config")
def app(cfg: DictConfig) -> float:
    """Train one model (or, with ``-m``, one job of a sweep); returns its KL (NaN for a model
    without a density: a sweeper that optimises the return value skips it)."""
    hydra_cfg = HydraConfig.get()
    try:
        check_additions(cfg, hydra_cfg.overrides.task, list(hydra_cfg.runtime.choices))
        return train(cfg, hydra_cfg.runtime.output_dir, sweep=_sweep_dir(hydra_cfg)).get(
            "kl", math.nan
        )
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


def _sweep_dir(hydra_cfg) -> str | None:
    """The sweep dir of a multirun job (the loggers tag its runs with it), else ``None``."""
    return str(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None


def foreign_key_hint(argv: list[str]) -> str | None:
    """Name the models a mistyped ``model.<key>`` override belongs to, when the chosen model
    has no such key (``model.sampler`` on NICE belongs to the ODE models).

    The chosen model is the one Hydra composes from the rest of the command line (an
    experiment may pick it); ``None`` when that cannot be composed or no model owns the key.
    """
    parsed = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parsed.extend(OverridesParser.create().parse_overrides([arg]))
        except Exception:  # noqa: BLE001 (not an override: Hydra reports it itself)
            return None
    model_keys = [o for o in parsed if o.key_or_group.startswith("model.")]
    rest = [o.input_line for o in parsed if o not in model_keys and not o.is_sweep_override()]
    if not model_keys:
        return None
    try:
        composed = compose_config(rest, hydra=True)
        chosen, missing = composed.hydra.runtime.choices.model, object()
        for override in model_keys:
            key = override.key_or_group[len("model.") :]
            if OmegaConf.select(composed.model, key, default=missing) is not missing:
                continue  # the chosen model has it: the error lies elsewhere
            owners = key_owners(key)
            if owners and chosen not in owners:
                owned = ", ".join(owners)
                return f"genlab: model.{key} belongs to {owned}; model={chosen} has no such key"
    except Exception:  # noqa: BLE001 (a hint is a courtesy: never mask the real error)
        return None
    return None


def unknown_option(argv: list[str]) -> str | None:
    """Hydra's message when the command line's config cannot be composed because a config
    group lacks the option asked for (``data=nonexistent``, or one option of a sweep such as
    ``model=nice,nope``), else ``None``. Composes the config as Hydra does (its search path
    included), so a plug-in's options count; a glob or range sweep is not expanded."""
    try:
        parsed = []
        for arg in argv:
            if not arg.startswith("-") and "=" in arg:
                parsed.extend(OverridesParser.create().parse_overrides([arg]))
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        variants = [fixed]
        for o in parsed:
            choice = o.value_type in (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP)
            if choice and "." not in o.key_or_group:
                variants += [[*fixed, f"{o.key_or_group}={v}"] for v in o.sweep_string_iterator()]
        for overrides in variants:
            try:
                compose_config(overrides)
            except MissingConfigException as e:
                return str(e).splitlines()[0]
    except Exception:  # noqa: BLE001 (a courtesy on the way out: never mask the real error)
        return None
    return None


def version() -> str:
    """``genlab 0.2.0 (hydra-core 1.3.2, torch 2.13.0+cpu)``: what ``genlab --version`` says."""
    import hydra
    import torch

    import genlab

    return (
        f"genlab {genlab.__version__} (hydra-core {hydra.__version__}, torch {torch.__version__})"
    )


def main() -> None:
    """The ``genlab`` console script (also ``python -m genlab``)."""
    if sys.argv[1:] == ["--version"]:
        print(version())
        return
    try:
        app()
    except SystemExit as e:
        if e.code not in (0, None) and (hint := foreign_key_hint(sys.argv[1:])):
            print(hint, file=sys.stderr)
        if e.code == 1 and unknown_option(sys.argv[1:]) is not None:
            sys.exit(2)  # a bad value, as every other one: Hydra printed the options there are
        raise
