"""The one training loop every model shares.

The loop knows a model only through ``loss`` (or a given loss function), ``after_step`` and
``nfe``. It runs Adam with warm-up and a constant or cosine schedule, clips gradients, shows a
progress bar, logs a line every ``log_every`` steps, records one history row per step and runs
interval hooks (checkpoints, plots); its state dict lets a run resume where it stopped.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from genlab.checks import check_choice, check_int, check_positive
from genlab.errors import Diverged
from genlab.files import read_text, write_csv
from genlab.models.base import Model

__all__ = ["History", "Trainer", "SCHEDULES", "lr_factor"]

log = logging.getLogger("genlab")

SCHEDULES = ("constant", "cosine")
HISTORY_FIELDS = ("round", "step", "loss", "lr", "seconds", "nfe_forward", "nfe_backward")


def lr_factor(step: int, progress: float, schedule: str, warmup_steps: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up over ``warmup_steps``,
    then constant, or cosine decay to zero as ``progress`` goes from 0 to 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _check_row(row: dict) -> None:
    """Raise ``ValueError`` unless ``row`` is a whole row of ``history.csv``."""
    if None in row or any(row.get(k) is None for k in HISTORY_FIELDS):
        raise ValueError("cut short")
    for key in ("round", "step"):
        int(row[key])
    for key in ("loss", "lr", "seconds"):
        float(row[key])
    for key in ("nfe_forward", "nfe_backward"):
        if row[key] != "":
            int(row[key])


@dataclass
class History:
    """Per-step training records, written to ``history.csv``.

    Attributes:
        rows: one dict per step (:data:`HISTORY_FIELDS`).
        damage: set by :meth:`read` when the file was damaged: where, and what was dropped.
    """

    rows: list[dict] = field(default_factory=list)
    damage: str | None = None

    def write(self, path: Path) -> None:
        """Write the rows to ``path`` atomically (:mod:`genlab.files`)."""
        write_csv(path, HISTORY_FIELDS, self.rows)

    @classmethod
    def read(cls, path: Path) -> History:
        """The rows of ``path`` (none if it does not exist), up to the first damaged one.

        A row is damaged when it is cut short (a last line without its newline, or with fewer
        fields) or holds a field that does not parse; that row and every row after it are
        dropped, and :attr:`damage` says where. A file that is no CSV history at all (another
        header) keeps no rows.
        """
        if not path.exists():
            return cls()
        text = read_text(path)
        lines = text.splitlines(keepends=True)
        cut = bool(lines) and not lines[-1].endswith("\n")
        reader = csv.DictReader(lines[:-1] if cut else lines)
        if reader.fieldnames is not None and tuple(reader.fieldnames) != HISTORY_FIELDS:
            return cls(damage=f"its header is {reader.fieldnames}, not {list(HISTORY_FIELDS)}")
        rows = []
        for row in reader:
            try:
                _check_row(row)
            except ValueError as e:
                what = "is cut short" if str(e) == "cut short" else f"does not parse ({e})"
                return cls(rows, f"line {reader.line_num} {what}")
            rows.append(row)
        damage = f"line {len(rows) + 2} is cut short" if cut else None
        return cls(rows, damage)

    def truncate(self, round_: int, step: int) -> None:
        """Drop rows after ``step`` of ``round_`` (and of later rounds): used on resume."""
        self.rows = [
            r
            for r in self.rows
            if int(r["round"]) < round_ or (int(r["round"]) == round_ and int(r["step"]) <= step)
        ]


@dataclass(slots=True)
class StepResult:
    """What one step of :meth:`Trainer.fit` produced, for its history row, bar and log line.

    Attributes:
        loss: the step's loss.
        lr: the learning rate it stepped at.
        solved: whether the step solved an ODE (the CNF); the NFE are meaningless otherwise.
        nfe_forward, nfe_backward: velocity evaluations of the loss and of its backward pass.
    """

    loss: float = 0.0
    lr: float = 0.0
    solved: bool = False
    nfe_forward: int = 0
    nfe_backward: int = 0


class Trainer:
    """Adam + schedule + clipping over a stream of batches.

    Arguments:
        model: the model; its parameters are optimised.
        steps: number of optimiser steps (>= 1).
        lr: peak learning rate; ``schedule`` is ``constant`` or ``cosine`` after
            ``warmup_steps`` of linear warm-up. The cosine reaches zero at the end of the
            budget that binds first: ``steps``, or ``max_seconds`` when it is set.
        grad_clip: max global gradient norm (``None`` or 0 disables).
        max_seconds: stop early once training has taken this long (``None``: no limit).
        log_every: a log line every this many steps and at the first and last (0: none).
        progress: show a progress bar.
        round_: index recorded in the history (reflow rounds of the rectified flow).
        desc: label of the progress bar and log lines.
    """

    def __init__(
        self,
        model: Model,
        *,
        steps: int,
        lr: float = 1e-3,
        schedule: str = "cosine",
        warmup_steps: int = 0,
        grad_clip: float | None = 1.0,
        max_seconds: float | None = None,
        log_every: int = 500,
        progress: bool = True,
        round_: int = 0,
        desc: str = "train",
    ) -> None:
        check_int("train.steps", steps, 1)
        check_int("train.warmup_steps", warmup_steps, 0)
        check_int("train.log_every", log_every, 0)
        check_choice("schedule", schedule, SCHEDULES)
        check_positive("train.lr", lr)
        check_positive("train.max_seconds", max_seconds, none=True)
        self.model = model
        self.steps, self.schedule, self.warmup_steps = steps, schedule, warmup_steps
        self.grad_clip = grad_clip or None
        self.max_seconds = max_seconds
        self.log_every = log_every
        self.progress, self.round, self.desc = progress, round_, desc
        # The fused kernel updates all parameters at once: fewer, larger ops than the loop.
        self.params = list(model.parameters())  # listed once: walking the modules costs
        fused = all(p.device.type in ("cpu", "cuda") for p in self.params)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, fused=fused)
        self.lr = lr
        self.step = 0  # optimiser steps taken
        self.seconds = 0.0  # wall seconds spent in fit

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])

    @property
    def progress_fraction(self) -> float:
        """How far training is, 0 to 1, by steps or by seconds, whichever budget binds."""
        by_steps = (self.step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        by_time = self.seconds / self.max_seconds if self.max_seconds else 0.0
        return max(by_steps, by_time)

    def current_lr(self) -> float:
        """The learning rate of the next step (the schedule follows the binding budget)."""
        return self.lr * lr_factor(
            self.step, self.progress_fraction, self.schedule, self.warmup_steps
        )

    @property
    def done(self) -> bool:
        out_of_time = self.max_seconds is not None and self.seconds >= self.max_seconds
        return self.step >= self.steps or out_of_time

    def fit(
        self,
        next_batch: Callable[[], Sequence[Tensor]],
        history: History,
        loss_fn: Callable[..., Tensor] | None = None,
        hooks: Sequence[tuple[int, Callable[[Trainer], None]]] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Train until ``steps`` or ``max_seconds``, or until ``should_stop()`` says so.

        Arguments:
            next_batch: returns the next batch as a tuple of tensors.
            history: receives one row per step.
            loss_fn: ``loss_fn(*batch)``; defaults to ``model.loss``.
            hooks: ``(every, fn)`` pairs: ``fn(trainer)`` runs every ``every`` steps (0: never),
                e.g. checkpointing and plotting.
            should_stop: asked after every step (e.g. whether a signal arrived); ``True`` ends
                ``fit`` with the step complete, so a checkpoint taken then resumes exactly.
        """
        loss_fn = loss_fn or self.model.loss
        self.model.train()
        result = StepResult()  # refilled by every step: the loop allocates no record of its own
        with self._progress_bar() as bar, logging_redirect_tqdm():
            while not self.done:
                self._after(self._step(next_batch, loss_fn, result), history, bar, hooks)
                if should_stop is not None and should_stop():
                    break
        if self.done and self.step < self.steps:
            log.info("%s stopped at step %d: train.max_seconds reached", self.desc, self.step)
        self.model.eval()

    def _progress_bar(self) -> tqdm:
        return tqdm(
            total=self.steps,
            initial=self.step,
            desc=self.desc,
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def _step(
        self,
        next_batch: Callable[[], Sequence[Tensor]],
        loss_fn: Callable[..., Tensor],
        result: StepResult,
    ) -> StepResult:
        """One optimiser step on the next batch, timed from drawing the batch to the model's
        ``after_step``; fills ``result`` and returns it. Raises :class:`Diverged` on a
        non-finite loss, before any update."""
        start = time.perf_counter()
        model = self.model
        nfe0 = model.nfe
        loss = loss_fn(*next_batch())
        nfe1 = model.nfe
        lr = self.current_lr()
        value = loss.item()  # the one synchronisation of the step (honest CUDA timing)
        if not math.isfinite(value):
            raise Diverged(
                f"{self.desc}: loss is {value} at step {self.step + 1}; "
                f"try a lower train.lr (now {lr:.3g}) or gradient clipping"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nfe2 = model.nfe
        self._update(lr)
        self.seconds += time.perf_counter() - start
        self.step += 1
        result.loss, result.lr = value, lr
        # NFE only where the step solved an ODE (the CNF); elsewhere not applicable.
        result.solved = nfe0 is not None and nfe2 > nfe0
        if result.solved:
            result.nfe_forward, result.nfe_backward = nfe1 - nfe0, nfe2 - nfe1
        return result

    def _update(self, lr: float) -> None:
        """Clip the gradients, step the optimiser at ``lr`` and let the model follow (EMA)."""
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.model.after_step()

    def _after(
        self,
        result: StepResult,
        history: History,
        bar: tqdm,
        hooks: Sequence[tuple[int, Callable[[Trainer], None]]],
    ) -> None:
        """Record a finished step: its history row, the bar, the log line, the hooks due."""
        history.rows.append(self._row(result))
        if self.progress:
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.4f}", refresh=False)
        if self.log_every and (self.step in (1, self.steps) or self.step % self.log_every == 0):
            self._log(result)
        for every, hook in hooks:
            if every and self.step % every == 0:
                hook(self)

    def _row(self, result: StepResult) -> dict:
        """The step's row of ``history.csv`` (see :data:`HISTORY_FIELDS`)."""
        return {
            "round": self.round,
            "step": self.step,
            "loss": f"{result.loss:.6g}",
            "lr": f"{result.lr:.6g}",
            "seconds": f"{self.seconds:.4f}",
            "nfe_forward": result.nfe_forward if result.solved else "",
            "nfe_backward": result.nfe_backward if result.solved else "",
        }

    def _log(self, result: StepResult) -> None:
        nfe = f"  nfe {result.nfe_forward}+{result.nfe_backward}" if result.solved else ""
        log.info(
            "%s step %d/%d  loss %.4f  lr %.2e  %.1f steps/s%s",
            self.desc,
            self.step,
            self.steps,
            result.loss,
            result.lr,
            self.step / self.seconds,
            nfe,
        )
