"""``genlab-report <sweep dir>``: a leaderboard and a gallery from every run's outputs.

Reads each run's ``metrics.json`` (and ``samples.npz`` for the gallery) below the sweep dir and
writes ``leaderboard.md``, ``leaderboard.csv`` and ``gallery.png`` into it. A run whose files are
missing or corrupt is named with the reason and left out; the others are still reported. Hydra
sweeps call it at the end through :class:`SweepReport`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.experimental.callback import Callback

from genlab import plots  # noqa: F401  (sets the headless Agg backend)
from genlab.data import get_toy

__all__ = ["collect", "write_report", "SweepReport", "main"]

log = logging.getLogger("genlab")

MODEL_ORDER = ("nice", "cnf", "rectified_flow")
DATA_ORDER = (
    "8gaussians",
    "moons",
    "checkerboard",
    "2spirals",
    "pinwheel",
    "rings",
    "circles",
    "swissroll",
)
COLUMNS = (
    "data",
    "model",
    "kl",
    "kl_se",
    "nice_floor",
    "w2",
    "w2_floor",
    "train_seconds",
    "steps",
    "sample_seconds",
    "nfe",
    "params",
    "run",
)


def _order(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(value) if value in order else len(order), value)


def collect(sweep_dir: str | Path) -> tuple[list[dict], list[str]]:
    """Every run's metrics below ``sweep_dir``, sorted by data then model.

    Returns:
        ``(runs, problems)``: one dict per good run (its metrics plus ``run``, the run dir),
        and one line per run that could not be read, naming the file and the reason.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no such sweep dir: {root}")
    runs, problems = [], []
    for path in sorted(root.rglob("metrics.json")):
        try:
            m = json.loads(path.read_text())
            if not isinstance(m, dict):
                raise ValueError("not a JSON object")
            missing = [k for k in ("model", "data", "kl", "w2") if k not in m]
            if missing:
                raise ValueError(f"missing keys {missing}")
        except (OSError, ValueError) as e:
            problems.append(f"{path}: {e}")
            continue
        m["run"] = str(path.parent.relative_to(root))
        runs.append(m)
    runs.sort(key=lambda m: (_order(m["data"], DATA_ORDER), _order(m["model"], MODEL_ORDER)))
    return runs, problems


def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def leaderboard_markdown(runs: list[dict]) -> str:
    """The leaderboard as a Markdown table (KL +- SE, floor, W2 / floor, costs)."""
    head = (
        "data",
        "model",
        "KL (nats)",
        "NICE floor",
        "W2 / floor",
        "train s",
        "steps",
        "sample s (10k)",
        "NFE",
        "params",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in runs:
        row = (
            m["data"],
            m["model"],
            f"{_fmt(m['kl'])} ± {_fmt(m.get('kl_se'))}",
            _fmt(m.get("nice_floor"), 4),
            f"{_fmt(m['w2'], 2)} / {_fmt(m.get('w2_floor'), 2)}",
            _fmt(m.get("train_seconds"), 0),
            _fmt(m.get("steps")),
            _fmt(m.get("sample_seconds"), 2),
            _fmt(m.get("nfe")),
            _fmt(m.get("params")),
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def draw_gallery(root: Path, runs: list[dict], path: Path) -> None:
    """One column per data set: the data on top, then each model's samples and density."""
    import matplotlib.pyplot as plt

    datas = sorted({m["data"] for m in runs}, key=lambda d: _order(d, DATA_ORDER))
    models = sorted({m["model"] for m in runs}, key=lambda d: _order(d, MODEL_ORDER))
    rows = 1 + 2 * len(models)
    fig, axes = plt.subplots(
        rows, len(datas), figsize=(2.1 * len(datas), 2.1 * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    by_key = {(m["data"], m["model"]): m for m in runs}
    for j, data in enumerate(datas):
        toy = get_toy(data)
        b = toy.bound
        x = toy.sample(2000, torch.Generator().manual_seed(0)).numpy()
        axes[0, j].scatter(x[:, 0], x[:, 1], s=0.5, color="0.2", rasterized=True)
        axes[0, j].set(xlim=(-b, b), ylim=(-b, b), title=data)
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
            ax_s.scatter(s[:, 0], s[:, 1], s=0.5, color="tab:blue", rasterized=True)
            ax_s.set(xlim=(-bound, bound), ylim=(-bound, bound))
            ax_s.set_title(f"KL {m['kl']:.3f}", fontsize=7)
            ax_d.imshow(np.exp(logd), origin="lower", extent=(-bound, bound, -bound, bound))
    axes[0, 0].set_ylabel("data", fontsize=8)
    fig.suptitle(f"genlab gallery: {root.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(sweep_dir: str | Path) -> list[dict]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` and ``gallery.png`` into ``sweep_dir``.

    Raises ``FileNotFoundError`` if the dir is missing and ``ValueError`` if it holds no
    readable run; unreadable runs are logged and skipped.
    """
    root = Path(sweep_dir)
    runs, problems = collect(root)
    for p in problems:
        log.warning("skipped %s", p)
    if not runs:
        detail = f" ({len(problems)} unreadable)" if problems else ""
        raise ValueError(f"no runs with a readable metrics.json under {root}{detail}")
    (root / "leaderboard.md").write_text(leaderboard_markdown(runs))
    with open(root / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(runs)
    draw_gallery(root, runs, root / "gallery.png")
    log.info("report of %d runs written to %s", len(runs), root)
    return runs


class SweepReport(Callback):
    """Hydra callback: at the end of a multirun, write the report into the sweep dir."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            write_report(config.hydra.sweep.dir)
        except (OSError, ValueError) as e:
            log.error("no sweep report: %s", e)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``genlab-report <sweep dir>``."""
    parser = argparse.ArgumentParser(prog="genlab-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a sweep dir, e.g. outputs/multirun/<date_time>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        runs = write_report(args.sweep_dir)
    except (OSError, ValueError) as e:
        print(f"genlab-report: {e}", file=sys.stderr)
        return 1
    print(leaderboard_markdown(runs), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
