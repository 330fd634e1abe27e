"""Where a run's numbers and pictures go besides its run dir: TensorBoard, MLflow, or nowhere.

The lab knows a logger only through :class:`Logger`: ``open``, ``log_params``,
``log_metrics``, ``log_artifact`` and ``close``. The base class logs nothing (``logger=none``,
the default: the run dir's files are the record); a backend is one subclass plus one YAML in
``conf/logger/``, built by ``hydra.utils.instantiate`` from the ``logger`` group. A backend
whose package is missing refuses to be built, with one line naming the extra to install, so
the command stops before it writes a file.

:class:`RunLog` feeds one run to its logger: the flattened config as params when training
starts; during training, every ``logger.every`` steps, the step's row of ``history.csv``
(``train/loss``, ``train/lr`` and, where the step solved an ODE, ``train/nfe_forward`` and
``train/nfe_backward``) at the run's global step; at the end the last step's row, every number
of ``metrics.json`` as ``metrics/<key>`` at the last step, and every figure and
``metrics.json`` as files. Logging is cheap for the loop: one row in ``every`` (10 in the
shipped configs) is handed over; TensorBoard's writer queues it for its own thread and MLflow's
values are buffered here and sent in batches of up to 1000.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from genlab.checks import check_int
from genlab.errors import ConfigError
from genlab.fit import Stopped

__all__ = ["Logger", "TensorBoardLogger", "MLflowLogger", "RunLog", "flatten"]

Scalar = int | float | str | bool | None


def _require(module: str, extra: str) -> None:
    """Raise a one-line :class:`ConfigError` naming the extra if ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"logger={extra} needs the {module} package, which is not installed: "
            f'pip install "genlab[{extra}]"'
        )


def flatten(config: Mapping, prefix: str = "") -> dict[str, Scalar]:
    """A nested config as ``{"model.velocity.hidden": 64, ...}``; lists become strings."""
    out: dict[str, Scalar] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value) if isinstance(value, list | tuple) else value
    return out


class Logger:
    """A run's logger; this base class logs nothing (``logger=none``).

    Arguments:
        every: log the training scalars every this many steps of a stage (0: never); the
            last step is logged at the end of the run.
    """

    def __init__(self, every: int = 0) -> None:
        try:
            self.every = check_int("logger.every", every, 0)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def open(self, run_dir: Path, name: str, tags: Mapping[str, str]) -> None:
        """Start logging the run called ``name`` whose files are in ``run_dir``."""

    def log_params(self, params: Mapping[str, Scalar]) -> None:
        """The run's settings, flat (``{"train.lr": 0.001, ...}``)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Numbers at a global step (steps of all stages counted together)."""

    def log_artifact(self, path: Path) -> None:
        """A file of the run: a figure or ``metrics.json``."""

    def close(self, status: str = "FINISHED") -> None:
        """End the run: ``FINISHED``, ``FAILED`` or ``KILLED`` (stopped by a signal)."""


class TensorBoardLogger(Logger):
    """TensorBoard event files in the run dir, written by ``torch.utils.tensorboard``.

    ``tensorboard --logdir <sweep dir>`` shows one run per job. Scalars as logged; PNG
    figures as images; the params as hparams whose metrics are ``hparam_metrics`` (their last
    logged values), so the HParams tab compares runs by final KL and NLL.

    Arguments:
        every: see :class:`Logger`.
        hparam_metrics: the logged scalars shown beside the params.
    """

    def __init__(
        self, every: int = 10, hparam_metrics: tuple[str, ...] = ("metrics/kl", "metrics/nll")
    ) -> None:
        super().__init__(every)
        _require("tensorboard", "tensorboard")
        self.hparam_metrics = list(hparam_metrics)
        self.params: dict[str, Scalar] = {}
        self.latest: dict[str, float] = {}
        self.step = 0

    def open(self, run_dir: Path, name: str, tags: Mapping[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.writer.add_text("run", "  \n".join(f"{k}: {v}" for k, v in tags.items()))

    def log_params(self, params: Mapping[str, Scalar]) -> None:
        # hparams take int, float, str and bool
        self.params = {k: "null" if v is None else v for k, v in params.items()}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.latest.update(metrics)
        self.step = max(self.step, step)

    def log_artifact(self, path: Path) -> None:
        if path.suffix == ".png":
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"))
            self.writer.add_image(path.stem, rgb, self.step, dataformats="HWC")

    def close(self, status: str = "FINISHED") -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = {k: self.latest[k] for k in self.hparam_metrics if k in self.latest}
        if self.params and metrics:
            for summary in hparams(self.params, metrics):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()


class MLflowLogger(Logger):
    """One MLflow run per genlab run, in ``experiment`` of the store at ``tracking_uri``.

    Params from the flattened config, the scalars with their step, every figure and
    ``metrics.json`` as artifacts; tags name the run dir, the model, the data and, in a sweep,
    the sweep dir. ``mlflow ui --backend-store-uri <tracking_uri>`` browses the runs.

    Arguments:
        every: see :class:`Logger`.
        tracking_uri: a database (``sqlite:///outputs/mlflow.db``, relative to the working
            directory as ``outputs/`` is) or a tracking server's URL.
        experiment: the MLflow experiment, created on first use.
        artifact_location: where a new experiment keeps its files; ``null``: the store's
            default.
    """

    BATCH = 1000  # values per call: MLflow's log_batch limit

    def __init__(
        self,
        every: int = 10,
        tracking_uri: str = "sqlite:///outputs/mlflow.db",
        experiment: str = "genlab",
        artifact_location: str | None = "outputs/mlartifacts",
    ) -> None:
        super().__init__(every)
        _require("mlflow", "mlflow")
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.artifact_location = artifact_location
        self.buffer: list = []

    def _experiment_id(self) -> str:
        """The experiment's id; parallel sweep jobs creating a SQLite store or the experiment
        at once take turns (MLflow's table set-up is not safe to run concurrently)."""
        from filelock import FileLock
        from mlflow import MlflowClient

        db = self.tracking_uri.removeprefix("sqlite:///")
        if db != self.tracking_uri:
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{db}.lock") if db != self.tracking_uri else None
        with lock or contextlib.nullcontext():
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                return found.experiment_id
            where = self.artifact_location
            where = Path(where).absolute().as_uri() if where else None
            return self.client.create_experiment(self.experiment, artifact_location=where)

    def open(self, run_dir: Path, name: str, tags: Mapping[str, str]) -> None:
        experiment = self._experiment_id()  # sets self.client
        run = self.client.create_run(experiment, run_name=name, tags=dict(tags))
        self.run_id = run.info.run_id

    def log_params(self, params: Mapping[str, Scalar]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # log_batch takes 100 params at a time
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.buffer += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self.buffer) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        while self.buffer:
            batch, self.buffer = self.buffer[: self.BATCH], self.buffer[self.BATCH :]
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        self._flush()
        self.client.set_terminated(self.run_id, status)


def _step_scalars(row: Mapping[str, str | int]) -> dict[str, float]:
    """A ``history.csv`` row as training scalars (NFE only where the step solved an ODE)."""
    out = {"train/loss": float(row["loss"]), "train/lr": float(row["lr"])}
    for key in ("nfe_forward", "nfe_backward"):
        if row[key] != "":
            out[f"train/{key}"] = float(row[key])
    return out


class RunLog:
    """Feeds one run's fit to ``logger``; a context manager that closes the logger with the
    run's status (``FINISHED``, ``KILLED`` after a signal, else ``FAILED``).

    Arguments:
        logger: the run's logger.
        fit: the run's :class:`genlab.fit.Fit` (its config, run dir, history, model and data).
        sweep: the sweep dir of a multirun job, logged as the run's ``sweep`` tag (``None``:
            a single run).
    """

    def __init__(self, logger: Logger, fit, sweep: str | None = None) -> None:
        self.logger, self.fit, self.sweep = logger, fit, sweep
        self.logged = 0  # global step of the last row handed over

    def __enter__(self) -> RunLog:
        run_dir = self.fit.run_dir
        tags = {"run_dir": str(run_dir), "model": self.fit.model.name, "data": self.fit.toy.name}
        if self.sweep is not None:
            tags["sweep"] = self.sweep
        self.logger.open(run_dir, run_dir.name, tags)
        self.logger.log_params(flatten(self.fit.config))
        return self

    @property
    def hook(self) -> tuple[int, Callable]:
        """The trainer hook ``(every, fn)`` that logs the latest step's scalars."""
        return self.logger.every, lambda trainer: self._log_row()

    def _log_row(self) -> None:
        rows = self.fit.history.rows  # one per step of every stage: its length is the step
        if rows and self.logged != len(rows):
            self.logger.log_metrics(_step_scalars(rows[-1]), step=len(rows))
            self.logged = len(rows)

    def finish(self, metrics: Mapping) -> None:
        """Log the last step, the final ``metrics`` and every figure and ``metrics.json``."""
        if self.logger.every:
            self._log_row()
        numbers = {
            f"metrics/{k}": v
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        self.logger.log_metrics(numbers, step=len(self.fit.history.rows))
        run_dir = self.fit.run_dir
        for path in [*sorted(run_dir.glob("*.png")), *sorted(run_dir.glob("*.gif"))]:
            self.logger.log_artifact(path)
        self.logger.log_artifact(run_dir / "metrics.json")

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.logger.close("FINISHED")
        else:
            stopped = isinstance(error, Stopped | KeyboardInterrupt)
            self.logger.close("KILLED" if stopped else "FAILED")
