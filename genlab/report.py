"""``genlab-report <sweep dir>``: a leaderboard and a gallery from every run's outputs.

Reads each run's ``metrics.json`` (and ``samples.npz`` for the gallery) below the sweep dir and
writes ``leaderboard.md``, ``leaderboard.csv`` and ``gallery.png`` into it (with ``--animate``
also ``gallery.gif``, the runs' ``flow.gif`` tiled as the gallery is), and, when runs
scored few-step samplers (``w2_<sampler><k>`` beside ``nfe_<sampler><k>``, also per stage as
``round<r>_...``), ``quality_vs_nfe.png``: W2 against NFE for every sampler of every run, one
panel per data set, with the W2 floor. A run whose files are
missing or corrupt is named with the reason and left out; the others are still reported. Data
sets and models appear in the order the sweep was given (see :func:`sweep_order`). Hydra sweeps
call it at the end through :class:`SweepReport`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from matplotlib.animation import PillowWriter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from PIL import Image, ImageSequence

from genlab import metrics, plots, scores
from genlab.data.base import toy_label
from genlab.files import (
    ENCODING,
    atomic,
    atomic_group,
    csv_text,
    put_text,
    read_text,
    write_text,
)
from genlab.ode import SOLVERS
from genlab.plots import FPS, GIF_DPI
from genlab.runs import ERROR_FILE

__all__ = [
    "collect",
    "sweep_order",
    "quality_points",
    "write_report",
    "animate_gallery",
    "SweepReport",
    "main",
]

log = logging.getLogger("genlab")

COLUMNS = (
    "data",
    "model",
    "kl",
    "kl_se",
    "nice_floor",
    "w2",
    "w2_floor",
    "cross_entropy",
    "entropy",
    "off_support",
    "train_seconds",
    "steps",
    "sample_seconds",
    "nfe",
    "params",
    "run",
)


#: What a report writes, the leaderboard first.
REPORT_FILES = ("leaderboard.md", "leaderboard.csv", "gallery.png", "quality_vs_nfe.png")


def sweep_order(runs: list[dict], key: str) -> list[str]:
    """The distinct values of ``key`` (``"data"`` or ``"model"``) in the sweep's order.

    Hydra's sweepers (basic, joblib, submitit) number the jobs of ``model=nice,cnf data=a,b``
    (or of an experiment's ``hydra.sweeper.params``) along the cartesian product in the order
    given, so a value's place is the first job number ``job`` among the runs holding it. A
    folder holding several sweeps (each numbering its jobs from 0) takes them one after
    another, by the path of each run's ``sweep``, so each sweep keeps its own order and a
    sweep finished into a second folder continues the first. Values seen only in runs
    without a job number (hand-made dirs, single runs) follow, alphabetically.

    Arguments:
        runs: dicts with ``key`` and ``job``, the run's Hydra job number or ``None``, and
            optionally ``sweep`` (see :func:`_sweep_of`).

    Returns:
        The values, each once, first-swept first.
    """
    last = (True, "", math.inf)
    first: dict[str, tuple] = {}
    for m in runs:
        if m.get("job") is None:
            place = last
        else:
            place = (False, m.get("sweep", ""), m["job"])
        first[m[key]] = min(first.get(m[key], last), place)
    return sorted(first, key=lambda value: (first[value], value))


def _job_num(run_dir: Path) -> int | None:
    """``hydra.job.num`` from the run's ``.hydra/hydra.yaml``; ``None`` if it has none."""
    try:
        num = yaml.safe_load(read_text(run_dir / ".hydra" / "hydra.yaml"))["hydra"]["job"]["num"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return num if isinstance(num, int) else None


def _sweep_of(run_dir: Path, root: Path) -> str:
    """The sweep ``run_dir`` belongs to: the nearest folder from it up to ``root`` that holds
    Hydra's ``multirun.yaml``, relative to ``root`` (``""`` for ``root`` itself, or when no
    such folder exists), so run dirs nested by a ``hydra.sweep.subdir`` with slashes still
    count as one sweep."""
    for folder in run_dir.parents:
        if (folder / "multirun.yaml").is_file() or folder == root:
            return "" if folder == root else str(folder.relative_to(root))
    return ""


def collect(sweep_dir: str | Path) -> tuple[list[dict], list[str]]:
    """Every run's metrics below ``sweep_dir``, sorted by data then model in sweep order.

    Raises ``FileNotFoundError`` if the dir is missing and ``ValueError`` if it is a single run
    (it holds ``metrics.json`` and no run lies below it).

    Returns:
        ``(runs, problems)``: one dict per good run (its metrics plus ``run``, the run dir, and
        ``job``, its Hydra job number or ``None``), and one line per run that could not be read,
        naming the file and the reason.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no such sweep dir: {root}")
    paths = sorted(root.rglob("metrics.json"))
    if paths == [root / "metrics.json"]:
        parent = Path(os.path.abspath(root)).parent
        raise ValueError(
            f"{root} is a single run, not a sweep dir: expected a sweep dir, "
            f"e.g. its parent {parent}"
        )
    runs, problems = [], []
    for path in paths:
        try:
            m = _read_metrics(path)
            _check_samples(path.parent / "samples.npz")
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
            problems.append(f"{path.parent.relative_to(root)}: {_reason(e)}")
            continue
        m["run"] = str(path.parent.relative_to(root))
        m["job"] = _job_num(path.parent)
        m["sweep"] = _sweep_of(path.parent, root)
        if m.get("data_constants"):  # a toy off its default constants is its own column
            m["data"] = toy_label(m["data"], m["data_constants"])
        if m.get("source", "gaussian") != "gaussian":  # a transport from a toy is its own row
            source = toy_label(m["source"], m.get("source_constants"))
            m["model"] = f"{m['model']} from {source}"
        if m.get("classes"):  # so is a conditional model (its KL is its null class's)
            m["model"] = f"{m['model']} (conditional)"
        m["setting"] = _setting(path.parent, m)
        runs.append(m)
    failed = {p.parent for p in root.rglob(ERROR_FILE)}
    for hydra_dir in sorted(root.rglob(".hydra")):
        run = hydra_dir.parent
        if run != root and run not in failed and not (run / "metrics.json").exists():
            problems.append(f"{run.relative_to(root)}: no metrics.json (it did not finish)")
    datas, models = sweep_order(runs, "data"), sweep_order(runs, "model")
    runs.sort(key=lambda m: (datas.index(m["data"]), models.index(m["model"])))
    return runs, problems


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, ValueError) and text else f"{type(e).__name__}: {text}"


#: Entries of metrics.json the report reads, and the types it needs them to have.
_TEXT_KEYS = ("model", "data")
_NUMBER_KEYS = ("w2",)  # a model without a density has no KL
_OPTIONAL_NUMBERS = (*COLUMNS[2:-1], "steps_per_second")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_metrics(path: Path) -> dict:
    """A run's ``metrics.json``, checked to hold what the report reads, of the right types.

    Raises:
        ValueError: naming the file's fault (not JSON, a missing or ill-typed key).
    """
    try:
        m = json.loads(read_text(path))
    except UnicodeDecodeError as e:
        raise ValueError(f"metrics.json is not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"metrics.json is not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(m, dict):
        raise ValueError("metrics.json is not a JSON object")
    missing = [k for k in (*_TEXT_KEYS, *_NUMBER_KEYS) if k not in m]
    if missing:
        raise ValueError(f"metrics.json lacks {', '.join(missing)}")
    for key in _TEXT_KEYS:
        if not isinstance(m[key], str):
            raise ValueError(f"metrics.json: {key} is {m[key]!r}, not a name")
    for key in ("data_constants", "source_constants"):
        if not isinstance(m.get(key, {}), dict):
            raise ValueError(f"metrics.json: {key} is {m[key]!r}, not a table of constants")
    for key in _NUMBER_KEYS + tuple(k for k in _OPTIONAL_NUMBERS if m.get(k) is not None):
        if not _is_number(m[key]):
            raise ValueError(f"metrics.json: {key} is {m[key]!r}, not a number")
    return m


def _check_samples(path: Path) -> None:
    """Refuse a damaged ``samples.npz`` (the gallery's arrays); an absent one is no fault
    (the run's gallery cells stay blank)."""
    if not path.exists():
        return
    try:
        with np.load(path) as f:
            samples, logd, bound = f["samples"], f["log_density"], f["bound"]
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise ValueError(f"samples.npz is damaged ({_reason(e)})") from None
    if samples.ndim != 2 or samples.shape[1] != 2 or logd.ndim != 2 or bound.size != 1:
        raise ValueError(
            f"samples.npz holds arrays of shapes {samples.shape}, {logd.shape}, {bound.shape}, "
            "not (n, 2) samples, a square log-density and a bound"
        )


def collect_failures(sweep_dir: str | Path) -> list[dict]:
    """The sweep's failed jobs: each ``error.json`` below ``sweep_dir`` (model, data, error),
    with ``run``, its dir, in job order."""
    root = Path(sweep_dir)
    failures = []
    for path in sorted(root.rglob(ERROR_FILE)):
        try:
            failure = json.loads(read_text(path))
            if not isinstance(failure, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            failure = {"error": f"unreadable {ERROR_FILE}: {e}"}
        failure["run"] = str(path.parent.relative_to(root))
        failures.append(failure)
    failures.sort(key=lambda f: (f.get("job") is None, f.get("job") or 0, f["run"]))
    return failures


def failures_markdown(failures: list[dict]) -> str:
    """The failed jobs as a Markdown table (run, model, data, reason)."""
    rows = [
        (f["run"], f.get("model", ""), f.get("data", ""), _cell(f.get("error", "")))
        for f in failures
    ]
    return _table(("run", "model", "data", "reason"), rows)


def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def _seconds(value) -> str:
    """About three significant figures: 2 decimals under 10 s, 1 under 100 s, then none."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return _fmt(value)
    return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f}"


#: A run that trained at under this fraction of its model's median steps/s in the sweep is
#: flagged: the machine was busy then (contention), and its figures understate the model.
SLOW = 0.5


def speeds(runs: list[dict]) -> tuple[dict[str, float], set[int]]:
    """The median steps/s of each model over the sweep's runs, and the runs (by index) that
    trained at under :data:`SLOW` of their model's median, among models with 3 runs or more."""
    medians, slow = {}, set()
    for model in sweep_order(runs, "model"):
        rates = {i: m.get("steps_per_second") for i, m in enumerate(runs) if m["model"] == model}
        rates = {k: v for k, v in rates.items() if isinstance(v, int | float) and v > 0}
        if not rates:
            continue
        medians[model] = float(np.median(list(rates.values())))
        if len(rates) >= 3:
            slow |= {k for k, v in rates.items() if v < SLOW * medians[model]}
    return medians, slow


def speed_markdown(runs: list[dict], medians: dict[str, float], slow: set[int]) -> str:
    """The line under the table that lets seconds be read across machines: where the runs
    trained, each model's median steps/s, and what a flag on a run's steps means (``medians``
    and ``slow`` as :func:`speeds` gives them)."""
    if not medians:
        return ""
    where = sorted({m["machine"] for m in runs if m.get("machine")})
    rates = ", ".join(f"{k} {_seconds(v)}" for k, v in medians.items())
    text = f"\nMedian steps/s per model in this sweep: {rates}"
    text += f" (on {'; '.join(where)}).\n" if where else ".\n"
    evals = {}
    for m in runs:
        if isinstance(m.get("eval_seconds"), int | float):
            evals.setdefault(m["model"], []).append(m["eval_seconds"])
    if evals:
        shown = ", ".join(  # in the order of the steps/s above
            f"{k} {_seconds(float(np.median(evals[k])))}" for k in medians if k in evals
        )
        text += f"Median seconds of evaluation and figures per run: {shown}.\n"
    if slow:
        text += (
            f"\n† trained at under {SLOW:g}x its model's median steps/s: the machine was busy "
            "then, so that run's figures understate the model.\n"
        )
    return text


def _setting(run_dir: Path, m: dict) -> tuple | None:
    """What a run was asked for besides its seed: its data, model and Hydra overrides other
    than ``seed=`` (``.hydra/overrides.yaml``), so that runs of one setting group together;
    ``None`` for a run without that record (it then stands alone)."""
    try:
        overrides = yaml.safe_load(read_text(run_dir / ".hydra" / "overrides.yaml"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(overrides, list):
        return None
    rest = sorted(
        o for o in overrides if isinstance(o, str) and o.lstrip("+~").split("=")[0] != "seed"
    )
    return (m["data"], m["model"], *rest)


def seed_groups(runs: list[dict]) -> list[list[dict]]:
    """The runs grouped by setting (:func:`_setting`): each group holds the runs that differ
    only by their seed, in the runs' order, and lists its runs by seed."""
    groups: dict[tuple, list[dict]] = {}
    for m in runs:
        groups.setdefault(m.get("setting") or ("run", id(m)), []).append(m)
    return [
        sorted(g, key=lambda m: (m.get("seed") is None, m.get("seed") or 0))
        for g in groups.values()
    ]


def setting_labels(groups: list[list[dict]]) -> list[str]:
    """A short name for each group's setting: its model, then the overrides that tell it from
    the other groups, so ``nice (model.fourier_draw=quasi)`` stands beside ``nice``. Left out:
    the overrides every group shares, ``seed=``, and those the model and data names already
    carry (``model=``, ``data=``, ``source=``, ``conditional=`` and a toy's constants)."""

    def named(override):
        key = override.lstrip("+~").split("=")[0]
        return key in ("model", "data", "seed", "source", "conditional") or key.startswith(
            ("data.", "source.")
        )

    def extras(group):
        return [o for o in (group[0].get("setting") or ())[2:] if not named(o)]

    lists = [extras(g) for g in groups]
    shared = set.intersection(*map(set, lists)) if lists else set()
    labels = []
    for group, extra in zip(groups, lists, strict=True):
        own = [o for o in extra if o not in shared]
        labels.append(group[0]["model"] + (f" ({', '.join(own)})" if own else ""))
    return labels


def order_markdown(groups: list[list[dict]], labels: list[str]) -> str:
    """Per data set, its settings in order of median KL, cut into tiers only where the seeds'
    ranges do not overlap: every KL before a ``<`` is below every KL after it, so an order is
    stated only where no seed would reverse it. Settings with fewer than two seeds, or no
    density, take no part; the empty string when no data set has two such settings."""
    by_data: dict[str, list[tuple[list[float], str]]] = {}
    for group, label in zip(groups, labels, strict=True):
        kls = [m["kl"] for m in group if _is_number(m.get("kl"))]
        if len(kls) > 1 and len(kls) == len(group):
            by_data.setdefault(group[0]["data"], []).append((kls, label))
    lines = []
    for data, entries in by_data.items():
        if len(entries) < 2:
            continue
        entries.sort(key=lambda e: float(np.median(e[0])))
        tiers, tier, worst = [], [], -np.inf
        for i, (kls, label) in enumerate(entries):
            rest = min(k for e in entries[i:] for k in e[0])
            if tier and worst < rest:  # everything so far lies below everything from here
                tiers.append(tier)
                tier = []
            tier.append(label)
            worst = max(worst, max(kls))
        tiers.append(tier)
        lines.append(f"- {data}: " + " < ".join(", ".join(t) for t in tiers))
    if not lines:
        return ""
    return (
        "\nOrder by median KL, lowest first; `<` only where every seed of the settings before it "
        "has a lower KL than every seed of those after it (`,` where the ranges overlap):\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _rank_key(group: list[dict]) -> str:
    """What ranks a group's runs: the KL, or W2 for a model without a density."""
    return "kl" if all(_is_number(m.get("kl")) for m in group) else "w2"


def median_run(group: list[dict]) -> dict:
    """The run of median KL in a group (of median W2 for a model without a density; the
    lower of the two middle ones for an even count): a run that was made, shown for the
    group in the gallery."""
    key = _rank_key(group)
    return sorted(group, key=lambda m: m[key])[(len(group) - 1) // 2]


def _kl_cell(m: dict) -> str:
    """``KL ± SE``; empty for a model without a density (never a made-up number)."""
    if not _is_number(m.get("kl")):
        return ""
    return f"{_fmt(m['kl'])} ± {_fmt(m.get('kl_se'))}"


def _ce_cell(ce, entropy, off) -> str:
    """The truth's cross-entropy of the samples beside the truth's entropy; infinite, with the
    share of samples off the support, where the truth's density is zero at some of them."""
    if ce is None and _is_number(off) and off > 0:
        return f"∞ ({100 * off:.2g}% off) / {_fmt(entropy)}"
    if ce is None:
        return ""
    return f"{_fmt(ce)} / {_fmt(entropy)}"


def _median(group: list[dict], key: str):
    values = [m[key] for m in group if _is_number(m.get(key))]
    return float(np.median(values)) if values else None


def _cell(text) -> str:
    """``text`` as a Markdown table cell (its ``|`` escaped)."""
    return str(text).replace("|", "\\|")


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table with a final newline."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def leaderboard_markdown(runs: list[dict]) -> str:
    """The leaderboard as a Markdown table (KL +- SE, floor, W2 / floor, costs), then each
    model's median steps/s (see :func:`speed_markdown`); † marks a run trained far slower than
    its model's median.

    When runs of one setting differ only by seed (``seed=0,1,2``), a row is one setting: the
    seeds, the median KL with its [min, max] over them, the median W2 beside the median floor,
    and median costs (:func:`seeds_markdown`)."""
    if any(len(g) > 1 for g in seed_groups(runs)):
        return seeds_markdown(runs)
    head = (
        "data",
        "model",
        "KL (nats)",
        "NICE floor",
        "W2 / floor",
        "CE / H (nats)",
        "train s",
        "steps",
        "sample s (10k)",
        "NFE",
        "params",
    )
    medians, slow = speeds(runs)
    rows = []
    for i, m in enumerate(runs):
        row = (
            m["data"],
            m["model"],
            _kl_cell(m),
            _fmt(m.get("nice_floor"), 4),
            f"{_fmt(m['w2'], 2)} / {_fmt(m.get('w2_floor'), 2)}",
            _ce_cell(m.get("cross_entropy"), m.get("entropy"), m.get("off_support")),
            _seconds(m.get("train_seconds")),
            _fmt(m.get("steps")) + (" †" if i in slow else ""),
            _fmt(m.get("sample_seconds"), 2),
            _fmt(m.get("nfe")),
            _fmt(m.get("params")),
        )
        rows.append(row)
    return _table(head, rows) + speed_markdown(runs, medians, slow) + conditional_markdown(runs)


def conditional_markdown(runs: list[dict]) -> str:
    """The conditional runs' own table: the mean conditional KL at w=0 with its SE, the range
    of the per-class KLs, and the truth's conditional cross-entropy of guided samples beside
    ``H(X|Y)``; empty without such runs."""
    here = [m for m in runs if _is_number(m.get("class_kl"))]
    if not here:
        return ""
    ws = metrics.GUIDANCE_SCALES
    head = ("data", "model", "class KL (nats)", "per class [min, max]", "H(X|Y)") + tuple(
        f"CE at w={w}" for w in ws
    )
    rows = []
    for m in here:
        per = [m.get(f"class_kl_{k}") for k in range(int(m.get("classes") or 0))]
        per = [v for v in per if _is_number(v)]
        spread = f"[{_fmt(min(per))}, {_fmt(max(per))}]" if per else ""
        ce = []
        for w in ws:
            off = m.get(f"guided_off_w{w}")
            ce.append(
                f"∞ ({100 * off:.2g}% off)" if _is_number(off) else _fmt(m.get(f"guided_ce_w{w}"))
            )
        rows.append(
            (
                m["data"],
                m["model"],
                f"{_fmt(m['class_kl'])} ± {_fmt(m.get('class_kl_se'))}",
                spread,
                _fmt(m.get("class_test_entropy")),
                *ce,
            )
        )
    note = (
        "\nConditional runs: `KL(p(.|y) || q(.|y))` at guidance w=0, averaged over the classes, "
        "and the truth's conditional cross-entropy `E[-log p(x|y)]` of samples guided at each "
        "w, beside the conditional entropy H(X|Y). Guided samples have no density to take a KL "
        "of (docs/bridges.md).\n"
    )
    return "\n" + _table(head, rows) + note


def seeds_markdown(runs: list[dict]) -> str:
    """The leaderboard of a sweep over seeds: one row per setting (see
    :func:`leaderboard_markdown`)."""
    head = (
        "data",
        "model",
        "seeds",
        "KL (nats): median [min, max]",
        "NICE floor",
        "W2 / floor: medians",
        "CE / H: medians",
        "train s",
        "steps",
        "sample s (10k)",
        "NFE",
        "params",
    )
    medians, slow = speeds(runs)
    slow_runs = {id(runs[i]) for i in slow}
    rows = []
    groups = seed_groups(runs)
    labels = setting_labels(groups)
    for group, label in zip(groups, labels, strict=True):
        first, kls = group[0], [m["kl"] for m in group if _is_number(m.get("kl"))]
        kl = _fmt(float(np.median(kls))) if kls else ""
        if len(kls) > 1:
            kl += f" [{_fmt(min(kls))}, {_fmt(max(kls))}]"
        ce = _median(group, "cross_entropy")
        if any(m.get("cross_entropy") is None for m in group):
            ce = None  # infinite for at least one seed: the median is no finite number either
        steps = _fmt(_median(group, "steps"), 0)
        row = (
            first["data"],
            label,
            ", ".join(_fmt(m.get("seed")) for m in group),
            kl,
            _fmt(first.get("nice_floor"), 4),
            f"{_fmt(_median(group, 'w2'), 2)} / {_fmt(_median(group, 'w2_floor'), 2)}",
            _ce_cell(ce, _median(group, "entropy"), _median(group, "off_support")),
            _seconds(_median(group, "train_seconds")),
            steps + (" †" if any(id(m) in slow_runs for m in group) else ""),
            _fmt(_median(group, "sample_seconds"), 2),
            _fmt(_median(group, "nfe"), 0),
            _fmt(first.get("params")),
        )
        rows.append(row)
    note = (
        "\nEach row is one setting over its seeds: the median KL with its [min, max], the "
        "median W2 beside the median floor, and median costs; the gallery shows the run of "
        "median KL. `leaderboard.csv` holds every run.\n"
    )
    order = order_markdown(groups, labels)
    grids = grid_markdown(groups, labels)
    return _table(head, rows) + note + order + grids + speed_markdown(runs, medians, slow)


#: A KL within this many of its standard errors of 0 is the yardstick's noise: the ratio of
#: two such KLs says nothing of the model, and the spread table marks it.
NOISE_SE = 3


def _spread(group: list[dict]) -> str:
    """max / min of the group's KLs (of its W2s for a model without a density, so marked),
    ``*`` where the smallest KL lies within :data:`NOISE_SE` standard errors of 0."""
    key = _rank_key(group)
    values = [m[key] for m in group if _is_number(m.get(key))]
    if len(values) < 2:
        return ""
    if key == "w2":
        return f"W2 {max(values) / min(values):.2f}"
    low = min(group, key=lambda m: m["kl"])
    if low["kl"] <= 0:  # an estimate at or below 0: no ratio, only noise
        return "*"
    noisy = _is_number(low.get("kl_se")) and low["kl"] < NOISE_SE * low["kl_se"]
    return f"{max(values) / low['kl']:.2f}" + " *" * noisy


def _summary(group: list[dict]) -> str:
    """The median KL with its [min, max] (the median W2 over the median floor without a
    density)."""
    if _rank_key(group) == "w2":
        return f"W2 {_fmt(_median(group, 'w2'), 2)} / {_fmt(_median(group, 'w2_floor'), 2)}"
    kls = [m["kl"] for m in group]
    return f"{_fmt(float(np.median(kls)))} [{_fmt(min(kls))}, {_fmt(max(kls))}]"


def grid_markdown(groups: list[list[dict]], labels: list[str]) -> str:
    """Two tables with a row per setting and a column per data set, for a sweep over seeds
    and several data sets: each cell's median KL with its [min, max], and its spread over the
    seeds, max / min (see :func:`_spread`); the empty string otherwise."""
    datas = list(dict.fromkeys(g[0]["data"] for g in groups))
    if len(datas) < 2 or not any(len(g) > 1 for g in groups):
        return ""
    cells: dict[str, dict[str, list[dict]]] = {}
    for group, label in zip(groups, labels, strict=True):
        cells.setdefault(label, {})[group[0]["data"]] = group
    head = ("setting", *datas)
    summary = [
        (label, *(_summary(c[d]) if d in c else "" for d in datas)) for label, c in cells.items()
    ]
    spread = [
        (label, *(_spread(c[d]) if d in c else "" for d in datas)) for label, c in cells.items()
    ]
    return (
        "\nBy setting and data set: the median KL (nats) with its [min, max] over the seeds; "
        "the median W2 beside its floor for a model without a density:\n\n"
        + _table(head, summary)
        + "\nSpread over the seeds: the largest KL over the smallest (W2 for a model without "
        f"a density); `*` where the smallest KL lies within {NOISE_SE} standard errors of 0, "
        "so that the ratio measures the yardstick's noise, not the model:\n\n"
        + _table(head, spread)
    )


def _toy(root: Path, runs: list[dict]):
    """The data set of ``runs``, built from the first run's own config (``.hydra/config.yaml``,
    its ``data`` node), so a toy from outside genlab shows as any other; ``None`` (with a
    warning) when no run's config builds it."""
    for m in runs:
        path = root / m["run"] / ".hydra" / "config.yaml"
        try:
            return instantiate(OmegaConf.load(path).data)
        except Exception as e:  # noqa: BLE001 (the gallery still shows the models)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if runs:
        log.warning("gallery: no data points for %s (%s)", runs[0]["data"], reason)
    return None


def draw_gallery(root: Path, runs: list[dict]) -> Figure:
    """One column per data set: the data on top, then each model's samples and density.

    Returns:
        A figure on an Agg canvas (no pyplot state to close), laid out so that the title and
        every label lie inside it.
    """
    datas, models = sweep_order(runs, "data"), sweep_order(runs, "model")
    rows = 1 + 2 * len(models)
    fig = Figure(figsize=(2.1 * len(datas), 2.1 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(datas), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    by_key = {(m["data"], m["model"]): m for m in runs}
    for j, data in enumerate(datas):
        toy = _toy(root, [m for m in runs if m["data"] == data])
        axes[0, j].set_title(data)
        if toy is not None:
            b = toy.bound
            x = toy.sample(2000, torch.Generator().manual_seed(0)).numpy()
            axes[0, j].scatter(x[:, 0], x[:, 1], s=0.5, color="0.2", rasterized=True)
            axes[0, j].set(xlim=(-b, b), ylim=(-b, b))
        for i, model in enumerate(models):
            ax_s, ax_d = axes[1 + 2 * i, j], axes[2 + 2 * i, j]
            if j == 0:
                ax_s.set_ylabel(f"{model}\nsamples", fontsize=8)
                ax_d.set_ylabel(f"{model}\ndensity", fontsize=8)
            m = by_key.get((data, model))
            arrays = root / m["run"] / "samples.npz" if m else None
            if arrays is None or not arrays.is_file():
                continue
            with np.load(arrays) as f:
                s, logd, bound = f["samples"], f["log_density"], float(f["bound"])
                histogram = bool(f["histogram"]) if "histogram" in f else False
            ax_s.scatter(s[:, 0], s[:, 1], s=0.5, color="tab:blue", rasterized=True)
            ax_s.set(xlim=(-bound, bound), ylim=(-bound, bound))
            shown = f"KL {m['kl']:.3f}" if _is_number(m.get("kl")) else f"W2 {m['w2']:.3f}"
            ax_s.set_title(shown, fontsize=7)
            ax_d.imshow(np.exp(logd), origin="lower", extent=(-bound, bound, -bound, bound))
            if histogram:  # a model without a density: its samples' histogram, named so
                ax_d.set_title("no density: histogram", fontsize=7)
    axes[0, 0].set_ylabel("data", fontsize=8)
    title = fig.suptitle(f"genlab gallery: {root.name}")
    # One column is narrower than the title: widen the figure to fit it (constrained layout fits
    # the rest, but it never grows the canvas).
    width = title.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi + 0.3
    fig.set_figwidth(max(fig.get_figwidth(), width))
    return fig


def animate_gallery(root: Path, runs: list[dict], path: Path) -> None:
    """The runs' ``flow.gif`` frame by frame, laid out as the gallery: a row per model, a
    column per data set, in the sweep's order; cells of runs without a GIF stay blank.

    Raises ``ValueError`` when no run has a ``flow.gif`` (runs made with plots.animate=false).
    """
    datas, models = sweep_order(runs, "data"), sweep_order(runs, "model")
    clips = {}
    for m in runs:
        if (root / m["run"] / "flow.gif").is_file():
            with Image.open(root / m["run"] / "flow.gif") as gif:
                frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
            clips[(m["data"], m["model"])] = frames
    if not clips:
        raise ValueError(f"no run under {root} has a flow.gif: they ran with plots.animate=false")
    fig = Figure(figsize=(2.2 * len(datas), 2.2 * len(models) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(models), len(datas), squeeze=False)
    images = {}
    for (i, model), (j, data) in itertools.product(enumerate(models), enumerate(datas)):
        ax = axes[i, j]
        ax.set(xticks=[], yticks=[], title=data if i == 0 else "")
        ax.set_ylabel(model if j == 0 else "", fontsize=8)
        if (data, model) in clips:
            images[(data, model)] = ax.imshow(clips[(data, model)][0])
    fig.suptitle(f"genlab flows: {root.name}")
    writer = PillowWriter(fps=FPS)
    with writer.saving(fig, path, dpi=GIF_DPI):
        for f in range(max(len(c) for c in clips.values())):
            for key, image in images.items():
                image.set_data(clips[key][min(f, len(clips[key]) - 1)])
            writer.grab_frame()


def _shown_scores(run: dict) -> list:
    """The run's few-step scores, less those of its last stage for every sampler that the end
    of the run scores too: the last stage ends where the run does, so they are one curve."""
    found = scores.read(run)
    staged = [s.stage for s in found if s.stage is not None]
    final = {s.sampler for s in found if s.stage is None}
    last = max(staged, default=None)
    return [
        s for s in found if not (s.stage == last and s.stage is not None and s.sampler in final)
    ]


def _curves(run: dict, x) -> dict[str, dict[float, float]]:
    """``{label: {x(score): W2}}`` over the run's shown scores, leaving out those where
    ``x(score)`` is ``None``."""
    curves: dict[str, dict[float, float]] = {}
    for score in _shown_scores(run):
        if x(score) is None:
            continue
        label = run["model"] if score.stage is None else f"{run['model']} round {score.stage}"
        label += f", {score.sampler}" + (" (ODE)" if score.sampler in SOLVERS else "")
        curves.setdefault(label, {})[x(score)] = score.w2
    return curves


def quality_points(run: dict) -> dict[str, dict[float, float]]:
    """``{label: {NFE: W2}}`` from one run's few-step scores (:func:`genlab.scores.read`).

    End-of-run scores give the curve ``<model>, <sampler>``; per-stage scores give
    ``<model> round <r>, <sampler>`` (the last stage's only where the end of the run does not
    score that sampler: they would be the same curve). An ODE solver's name is marked ``(ODE)``.
    Scores without a recorded NFE are left out: the cost of a step is counted by the run, never
    assumed here."""
    return _curves(run, lambda score: score.nfe)


def quality_times(run: dict) -> dict[str, dict[float, float]]:
    """``{label: {seconds: W2}}``: the curves of :func:`quality_points` against the seconds
    each scored draw took (scores without a recorded time or NFE are left out)."""
    return _curves(run, lambda score: None if score.nfe is None else score.seconds)


def quality_panels(runs: list[dict]) -> dict[str, tuple[dict, float]]:
    """``{data: (curves, floor)}`` for each data set whose runs hold few-step scores, in sweep
    order; the floor is the mean ``w2_floor`` of those runs."""
    panels = {}
    for data in sweep_order(runs, "data"):
        here = [m for m in runs if m["data"] == data]
        curves = {label: c for m in here for label, c in quality_points(m).items()}
        floors = [m["w2_floor"] for m in here if isinstance(m.get("w2_floor"), int | float)]
        if curves and floors:
            panels[data] = (curves, sum(floors) / len(floors))
    return panels


def write_report(sweep_dir: str | Path, animate: bool = False) -> list[dict]:
    """Write ``leaderboard.md``, ``leaderboard.csv``, ``gallery.png`` and, when runs scored
    few-step samplers, ``quality_vs_nfe.png`` into ``sweep_dir``; with ``animate`` also
    ``gallery.gif`` (see :func:`animate_gallery`).

    The files are drawn and written first and then put in place one after another in an
    instant (:func:`genlab.files.atomic_group`): a failure while drawing or writing leaves the
    previous report whole, never a new leaderboard beside an old gallery (``gallery.gif``
    follows them, so runs without a ``flow.gif`` still get the rest).
    A run whose ``metrics.json`` is unreadable or ill-typed, whose ``samples.npz`` is damaged,
    or that has no ``metrics.json`` (it did not finish), is left out and named with the reason
    under "Skipped runs" in ``leaderboard.md``.

    Raises ``FileNotFoundError`` if the dir is missing, ``ValueError`` if it is a single run or
    holds no readable run (or, with ``animate``, no ``flow.gif``), and
    :class:`genlab.errors.WriteError` if a file cannot be written.
    """
    root = Path(sweep_dir)
    runs, problems = collect(root)
    failures = collect_failures(root)
    for p in problems:
        log.warning("skipped %s", p)
    for f in failures:
        log.warning("failed run %s: %s", f["run"], f.get("error"))
    if not runs:
        detail = f" ({len(problems)} skipped)" if problems else ""
        if failures:
            board = f"Every run failed.\n\n## Failed runs\n\n{failures_markdown(failures)}"
            write_text(root / "leaderboard.md", board + skipped_markdown(problems))
            for stale in REPORT_FILES[1:]:  # no earlier gallery beside this leaderboard
                (root / stale).unlink(missing_ok=True)
            detail += f" ({len(failures)} failed: see {root / 'leaderboard.md'})"
        raise ValueError(f"no runs with a readable metrics.json under {root}{detail}")
    board = leaderboard_markdown(runs)
    if failures:
        board += f"\n## Failed runs\n\n{failures_markdown(failures)}"
    board += skipped_markdown(problems)
    panels = quality_panels(runs)
    names = list(REPORT_FILES[:3]) + ["quality_vs_nfe.png"] * bool(panels)
    # Everything is drawn into temporary files first and put in place together: a failure
    # anywhere leaves the previous report whole.
    with atomic_group([root / name for name in names]) as temps:
        tmp = dict(zip(names, temps, strict=True))
        put_text(tmp["leaderboard.md"], board)
        put_text(tmp["leaderboard.csv"], csv_text(COLUMNS, runs, extrasaction="ignore"))
        shown = [median_run(g) for g in seed_groups(runs)]  # one run per setting
        draw_gallery(root, shown).savefig(tmp["gallery.png"], dpi=100)
        if panels:
            title = f"W2 against NFE and sampling time: {root.name}"
            timed = {
                data: {
                    label: c
                    for m in runs
                    if m["data"] == data
                    for label, c in quality_times(m).items()
                }
                for data in panels
            }
            timed = timed if any(timed.values()) else None
            points = next((m.get("n_w2") for m in runs if _is_number(m.get("n_w2"))), None)
            plots.plot_quality_vs_nfe(panels, title, tmp["quality_vs_nfe.png"], timed, points)
    if animate:  # after the rest: runs without a flow.gif still get their leaderboard
        with atomic(root / "gallery.gif") as tmp_gif:
            animate_gallery(root, runs, tmp_gif)
    log.info("report of %d run%s written to %s", len(runs), "" if len(runs) == 1 else "s", root)
    return runs


def skipped_markdown(problems: list[str]) -> str:
    """The runs the report left out, with the reason, as a Markdown section ('' if none)."""
    if not problems:
        return ""
    rows = [(run, _cell(reason)) for run, _, reason in (p.partition(": ") for p in problems)]
    return "\n## Skipped runs\n\n" + _table(("run", "reason"), rows)


class SweepReport(Callback):
    """Hydra callback: at the end of a multirun, write the report into the sweep dir.

    A sweep with failed jobs still reports the others, then ends the command with exit
    code 1 and one line saying how many failed and where to read why.
    """

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        try:
            write_report(sweep)
        except (OSError, ValueError) as e:
            log.error("no sweep report: %s", e)
        except Exception:  # a bug: its traceback, but the sweep's runs and exit code stand
            log.exception("no sweep report: the report failed")
        failures = collect_failures(sweep) if sweep.is_dir() else []
        if failures:
            jobs = len(list(sweep.glob("*/.hydra")))
            print(
                f"genlab: {len(failures)} of {jobs} sweep jobs failed "
                f"({failures[0]['run']}: {failures[0].get('error')}); "
                f"see {sweep / 'leaderboard.md'}",
                file=sys.stderr,
            )
            sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``genlab-report [--animate] <sweep dir>``."""
    parser = argparse.ArgumentParser(prog="genlab-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a sweep dir, e.g. outputs/multirun/<date_time>")
    parser.add_argument(
        "--animate", action="store_true", help="also gallery.gif, from the runs' flow.gif"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        runs = write_report(args.sweep_dir, animate=args.animate)
    except (OSError, ValueError) as e:
        print(f"genlab-report: {e}", file=sys.stderr)
        return 1
    text, encoding = leaderboard_markdown(runs), sys.stdout.encoding or ENCODING
    print(text.encode(encoding, "replace").decode(encoding), end="")  # ± as ? on an ASCII tty
    return 0


if __name__ == "__main__":
    sys.exit(main())
