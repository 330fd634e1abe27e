"""A run's training: every stage of a model, in order, with checkpoints and exact resume.

A model says what it trains on through ``model.stages()`` (:class:`genlab.models.base.Stage`):
fresh data batches, or a fixed training set that the stage draws once when it starts (reflow's
pairs). :class:`Fit` runs one :class:`genlab.trainer.Trainer` per stage and treats every stage
alike: the checkpoint ``model.pt`` records the stage, its trainer, its training set and the
random states, so a run stopped anywhere, in any stage, resumes to the same weights as an
uninterrupted one. SIGTERM (SLURM pre-emption, ``kill``) and SIGINT (Ctrl-C) end training
gracefully: the step in progress completes, a checkpoint is written and :class:`Stopped` is
raised. A model with several stages is scored at the end of each (the stage's own
report, W2 against few-step sampling, and its paths for the figures).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from genlab import metrics, scores
from genlab.errors import CheckpointError, GenlabError
from genlab.models.base import Model, Stage, Transport
from genlab.runs import (
    CHECKPOINT,
    RESUME_KEYS,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
)
from genlab.trainer import History, Trainer

__all__ = ["Fit", "Stopped", "GracefulStop", "TRAJECTORY_PATHS"]

log = logging.getLogger("genlab")

TRAJECTORY_PATHS = 300  # paths recorded per stage for the trajectory figure

Hook = tuple[int, Callable[[Trainer], None]]


class Stopped(GenlabError):
    """Training was stopped by a signal after writing a checkpoint; ``signum`` names it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class GracefulStop:
    """While active, SIGTERM and SIGINT only take note (``stop()`` becomes true).

    The training loop asks after every step, so the step in progress completes and the
    checkpoint written then is consistent; a second signal while it is written changes
    nothing (and the write is atomic anyway). Outside the main thread, where Python cannot
    install handlers, it is inert.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _note(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    def __call__(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _resume_point(ckpt: dict) -> tuple[int, int, int | None]:
    """Where a checkpoint stands: its stage, its step in it, and the steps of the stage
    before (``None`` in the first), as :func:`resumed_history` takes them."""
    k, records = ckpt["stage"], ckpt["records"]
    before = records[k - 1]["steps"] if k and len(records) >= k else None
    return k, ckpt["trainer"]["step"], before


def resumed_history(
    path: Path, stage: int, step: int, before: int | None, quiet: bool = False
) -> History:
    """``history.csv`` cut back to a checkpoint at ``step`` of ``stage`` (``before``: the steps
    of the stage before it), and repaired when only rows after that step are damaged.

    A file that ends before the checkpoint's step is refused, since the lost rows cannot be
    rebuilt; a deleted one is accepted with a warning (the history then starts at the resume).

    Raises:
        CheckpointError: one line naming the file, where it is damaged, and how to go on.
    """
    if not path.exists():
        if not quiet:
            log.warning("%s is missing: the loss history up to step %d is lost", path, step)
        return History()
    history = History.read(path)
    history.truncate(stage, step)
    last = history.rows[-1] if history.rows else None
    at = None if last is None else (int(last["round"]), int(last["step"]))
    if step:
        wanted = (stage, step)
    else:  # a stage that has not begun: the history ends with the stage before
        wanted = (stage - 1, before) if stage else None
    if at != wanted:
        ends = "holds no step" if at is None else f"ends at step {at[1]} of stage {at[0]}"
        why = f"{history.damage}, so it {ends}" if history.damage else f"it {ends}"
        raise CheckpointError(
            f"{path}: {why}, short of {CHECKPOINT}'s step {step} of stage {stage}: restore it, "
            "or delete it to resume without the loss history up to that step"
        )
    if history.damage and not quiet:
        log.warning("%s: %s, after the checkpoint's step: dropped", path, history.damage)
    return history


class Fit:
    """Fit every stage of ``model`` on ``toy`` and keep ``run_dir`` ready to resume.

    Builds (and so validates) every stage's trainer before anything is written.

    Arguments:
        model: the model, already on its device.
        toy: the data set (``sample(n, generator)``).
        train: the ``train`` config (steps, batch_size, lr, schedule, ..., resume).
        run_dir: where ``model.pt`` and ``history.csv`` go.
        seed: seeds the data stream and the stages' training sets.
        config: the resolved run config, stored in every checkpoint.
        eval_seed, n_report: generator seed and sample size of the per-stage reports.
    """

    def __init__(
        self,
        model: Model,
        toy,
        train,
        run_dir: Path,
        *,
        seed: int,
        config: dict,
        eval_seed: int,
        n_report: int,
    ) -> None:
        self.model, self.toy, self.run_dir = model, toy, Path(run_dir)
        self.batch_size, self.resume = train.batch_size, train.resume
        self.checkpoint_every = train.checkpoint_every
        self.seed, self.config = seed, config
        self.eval_seed, self.n_report = eval_seed, n_report
        self.stages: list[Stage] = model.stages()
        self.trainers = [
            Trainer(
                model,
                steps=train.steps if stage.steps is None else stage.steps,
                lr=train.lr,
                schedule=train.schedule,
                warmup_steps=train.warmup_steps,
                grad_clip=train.grad_clip,
                max_seconds=train.max_seconds,
                log_every=train.log_every,
                progress=train.progress,
                round_=k,
                desc=f"{model.name} {stage.name}" if k else model.name,
            )
            for k, stage in enumerate(self.stages)
        ]
        device = model.device
        self.data_gen = torch.Generator(device).manual_seed(seed)
        self.history = History()
        self.stage = 0  # index of the stage in progress
        self.stage_data: tuple[Tensor, ...] | None = None  # its fixed training set, if any
        self.records: list[dict] = []  # per finished stage of a multi-stage model
        self.saved: tuple[int, int] | None = None  # (stage, step) of the last checkpoint

    # ----------------------------------------------------------------- checkpoints
    def save(self, trainer: Trainer) -> None:
        """Write ``history.csv`` and ``model.pt`` at ``trainer``'s step, each atomically.

        The history goes first: if the checkpoint then fails to be written, the history is
        ahead of the previous checkpoint, and a resume cuts it back to that checkpoint's step
        (:meth:`restore`); it is never behind the checkpoint, which would lose rows.
        """
        self.history.write(self.run_dir / "history.csv")
        save_checkpoint(
            self.run_dir / CHECKPOINT,
            {
                "model": self.model.state_dict(),
                "config": self.config,
                "stage": trainer.round,
                "trainer": trainer.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "data": self.data_gen.get_state()},
                "stage_data": self.stage_data,
                "records": self.records,
            },
        )
        self.saved = (trainer.round, trainer.step)

    def resume_advice(self, fix: str = "free space") -> str:
        """What survives a failed write and how to go on (``fix`` first), for its one line."""
        if self.saved is None:
            return f"no checkpoint was written yet; {fix} and train again"
        stage, step = self.saved
        at = f"step {step}" + (f" of stage {stage}" if len(self.trainers) > 1 else "")
        return (
            f"the last checkpoint ({at}) is intact; {fix} and resume with "
            f"train.resume=true hydra.run.dir={self.run_dir}"
        )

    def restore(self) -> None:
        """Continue from ``model.pt`` in the run dir (when ``train.resume`` is set).

        Raises:
            CheckpointError: the checkpoint is broken or holds another run, or ``history.csv``
                is damaged before the checkpoint's step (rows the resume cannot rebuild).
        """
        if not (self.run_dir / CHECKPOINT).exists():
            log.info("train.resume=true but %s has no %s: starting fresh", self.run_dir, CHECKPOINT)
            return
        # loads the weights into the model this run's config built; builds nothing from the file
        ckpt = resume_checkpoint(self.run_dir, self.model, self.config, len(self.trainers))
        k = ckpt["stage"]
        self.trainers[k].load_state_dict(ckpt["trainer"])
        self.records = ckpt["records"]
        for done, record in zip(self.trainers[:k], self.records, strict=False):
            done.step, done.seconds = record["steps"], record["seconds"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.data_gen.set_state(ckpt["rng"]["data"].to(self.data_gen.device))
        self.stage = k
        self.stage_data = None if ckpt["stage_data"] is None else tuple(ckpt["stage_data"])
        self.history = resumed_history(self.run_dir / "history.csv", *_resume_point(ckpt))
        self.saved = (k, self.trainers[k].step)
        log.info("resumed %s at stage %d step %d", self.run_dir, k, self.trainers[k].step)

    def check_history(self) -> None:
        """Refuse (``CheckpointError``) a resume whose ``history.csv`` cannot be repaired, before
        anything is written: what :meth:`restore` would find, read without changing a file
        (its warnings are left to the run)."""
        ckpt = load_checkpoint(self.run_dir, keys=RESUME_KEYS)
        resumed_history(self.run_dir / "history.csv", *_resume_point(ckpt), quiet=True)

    # ----------------------------------------------------------------- training
    def _batches(self, k: int, stage: Stage, trainer: Trainer) -> Callable[[], tuple]:
        """The stage's batch source: fresh data, or rows of its fixed training set."""
        device, batch = self.model.device, self.batch_size
        if stage.make_data is None:
            self.stage_data = None
            if getattr(self.model, "classes", 0):  # a conditional model: points, classes
                return lambda: tuple(
                    v.to(device) for v in self.toy.sample_labelled(batch, self.data_gen)
                )
            return lambda: (self.toy.sample(batch, self.data_gen).to(device),)
        if self.stage_data is None or trainer.step == 0:
            start = time.perf_counter()
            gen = torch.Generator(device).manual_seed(self.seed + 1000 * k)
            self.stage_data = tuple(stage.make_data(gen))
            trainer.seconds += time.perf_counter() - start  # part of the stage's cost
        data = self.stage_data

        def next_batch() -> tuple[Tensor, ...]:
            idx = torch.randint(len(data[0]), (batch,), generator=self.data_gen, device=device)
            return tuple(x[idx] for x in data)

        return next_batch

    def _record(self, k: int, stage: Stage, trainer: Trainer) -> None:
        """Score a multi-stage model at the end of stage ``k`` (once, also across resumes)."""
        if len(self.stages) == 1 or len(self.records) > k:
            return
        gen = torch.Generator(self.model.device).manual_seed(self.eval_seed)
        data = self.stage_data if stage.make_data is not None else None
        report = metrics.stage_report(self.model, stage, self.toy, gen, self.n_report, data)
        shown = ", ".join(
            f"{key} {v:.4f}" if isinstance(v, float) else f"{key} {v}" for key, v in report.items()
        )
        log.info("stage %d: %s", k, shown)
        paths = None
        if isinstance(self.model, Transport):
            paths = self.model.trajectories(TRAJECTORY_PATHS, gen).cpu()
        record = {"steps": trainer.step, "seconds": trainer.seconds, "report": report}
        self.records.append({**record, "paths": paths})

    def run(self, hooks: Sequence[Hook] = ()) -> None:
        """Train every stage from where the run stands; checkpoint at each stage's end.

        Arguments:
            hooks: extra ``(every, fn)`` pairs run every ``every`` steps (e.g. a sample plot).

        Raises:
            Stopped: after SIGTERM or SIGINT, once the checkpoint of the last step is written.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume:
            self.restore()
        with GracefulStop() as stop:
            for k in range(self.stage, len(self.stages)):
                stage, trainer = self.stages[k], self.trainers[k]
                self.stage = k
                next_batch = self._batches(k, stage, trainer)
                if not trainer.done:
                    every = [(self.checkpoint_every, self.save), *hooks]
                    trainer.fit(next_batch, self.history, stage.loss, every, should_stop=stop)
                if stop():
                    self._stop(trainer, stop.signum)
                self._record(k, stage, trainer)
                self.save(trainer)

    def _stop(self, trainer: Trainer, signum: int) -> None:
        self.save(trainer)
        name = signal.Signals(signum).name
        message = (
            f"stopped at step {trainer.step} of stage {trainer.round} by {name}: resume with "
            f"the same command and train.resume=true hydra.run.dir={self.run_dir}"
        )
        log.warning(message)
        raise Stopped(message, signum)

    # ----------------------------------------------------------------- results
    def summary(self) -> dict:
        """Training cost and per-stage scores, as flat ``metrics.json`` entries."""
        steps = sum(t.step for t in self.trainers)
        seconds = sum(t.seconds for t in self.trainers)
        out = {
            "steps": steps,
            "train_seconds": seconds,
            "steps_per_second": steps / max(seconds, 1e-9),
        }
        nfe_rows = [r for r in self.history.rows if r["nfe_forward"] != ""]
        if nfe_rows:
            total = [int(r["nfe_forward"]) + int(r["nfe_backward"]) for r in nfe_rows]
            k = min(10, len(total))
            out["train_nfe_first"] = sum(total[:k]) / k
            out["train_nfe_last"] = sum(total[-k:]) / k
        for k, record in enumerate(self.records):
            out.update(scores.stage_entries(k, record["report"]))
        return out
