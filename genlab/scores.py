"""Few-step quality scores as records, and the one grammar of their keys in ``metrics.json``.

A :class:`QualityScore` is W2 (and the NFE and seconds it cost) of one sampler at one step
count, at the end of the run or at the end of one training stage of a multi-stage model.
``metrics.json`` stores them flat, under keys of this grammar (this module writes them and reads
them back; no other module spells or parses them):

- ``w2_<sampler><steps>``, ``nfe_<sampler><steps>`` and ``sec_<sampler><steps>``: scored at
  the end of the run (``w2_ddim10``, ``nfe_ddim10``, ``sec_ddim10``); a sampler's name is
  lowercase letters and underscores;
- ``round<stage>_<key>``: any entry of the report at the end of stage ``stage`` (0 is the
  first training, k the k-th reflow round), its own diagnostics (``round1_straightness``)
  and its scores (``round1_w2_euler1``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["QualityScore", "flatten", "read", "stage_entries", "read_stages", "at_steps"]

_SCORE = re.compile(r"(?:round(\d+)_)?w2_([a-z_]+?)(\d+)")
_STAGE = re.compile(r"round(\d+)_(.+)")
_SAMPLER = re.compile(r"[a-z_]+")


@dataclass(frozen=True)
class QualityScore:
    """W2 to fresh data after ``steps`` steps of ``sampler``.

    Attributes:
        sampler: the sampler's name (``euler``, ``ddim``, ...).
        steps: its step count.
        w2: exact W2 between its samples and fresh data.
        nfe: velocity (or network) evaluations per sample it took, as counted; ``None`` for a
            model that does not count them.
        stage: the training stage at whose end it was scored; ``None``: the end of the run.
        seconds: wall-clock seconds of the draw that was scored (its ``n`` samples, the
            same ``n`` for every score of a run); ``None`` when not timed.
    """

    sampler: str
    steps: int
    w2: float
    nfe: int | float | None = None
    stage: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if not _SAMPLER.fullmatch(self.sampler):
            raise ValueError(
                f"a sampler's name is lowercase letters and underscores, got {self.sampler!r}"
            )

    def keys(self) -> dict[str, float]:
        """Its flat ``metrics.json`` entries."""
        prefix = "" if self.stage is None else f"round{self.stage}_"
        out = {f"{prefix}w2_{self.sampler}{self.steps}": self.w2}
        if self.nfe is not None:
            out[f"{prefix}nfe_{self.sampler}{self.steps}"] = self.nfe
        if self.seconds is not None:
            out[f"{prefix}sec_{self.sampler}{self.steps}"] = self.seconds
        return out


def flatten(scores: Iterable[QualityScore]) -> dict[str, float]:
    """The flat entries of ``scores``, in their order."""
    out: dict[str, float] = {}
    for score in scores:
        out.update(score.keys())
    return out


def read(metrics: Mapping) -> list[QualityScore]:
    """Every score in flat ``metrics`` (a run's ``metrics.json``, or one stage's report, whose
    keys carry no ``round`` prefix), in the order of their keys."""
    out = []
    for key, w2 in metrics.items():
        m = _SCORE.fullmatch(key)
        if m is None or not isinstance(w2, int | float):
            continue
        nfe = metrics.get(key.replace("w2_", "nfe_", 1))
        seconds = metrics.get(key.replace("w2_", "sec_", 1))
        stage = None if m.group(1) is None else int(m.group(1))
        nfe = nfe if isinstance(nfe, int | float) else None
        seconds = seconds if isinstance(seconds, int | float) else None
        out.append(QualityScore(m.group(2), int(m.group(3)), w2, nfe, stage, seconds))
    return out


def stage_entries(stage: int, report: Mapping) -> dict:
    """One stage's report (its diagnostics and flat scores) as ``round<stage>_`` entries."""
    return {f"round{stage}_{key}": value for key, value in report.items()}


def read_stages(metrics: Mapping) -> dict[int, dict]:
    """``{stage: report}`` from the ``round<stage>_`` entries of flat ``metrics``."""
    out: dict[int, dict] = {}
    for key, value in metrics.items():
        if m := _STAGE.fullmatch(key):
            out.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return out


def at_steps(scores: Iterable[QualityScore], steps: int) -> dict[str, float]:
    """``{sampler: W2}`` of the end-of-run scores at ``steps`` steps."""
    return {s.sampler: s.w2 for s in scores if s.steps == steps and s.stage is None}
