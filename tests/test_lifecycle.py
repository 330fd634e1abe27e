"""Nothing lost, nothing run: run dirs, signals, one-line errors and sweeps that survive a
failing job, each through the real ``genlab`` command in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides

# One torch thread per command: pytest -n 2 runs two tests at once on two cores.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)


def genlab(*args, cwd=None, env=ENV, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "genlab", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def started_together(tmp_path_factory) -> Path:
    """A dir from which two tiny NICE runs (moons, 8gaussians) were launched at once, each in
    the default run dir; the tests that need a finished run copy the moons one."""
    cwd = tmp_path_factory.mktemp("together")
    overrides = [o for o in tiny_overrides("nice") if not o.startswith("data=")]
    cmd = [sys.executable, "-m", "genlab", *overrides]
    procs = [
        subprocess.Popen([*cmd, f"data={d}"], cwd=cwd, env=ENV, stderr=subprocess.PIPE)
        for d in ("moons", "8gaussians")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    return cwd


def finished_run(started_together: Path, dst: Path) -> Path:
    """A copy at ``dst`` of the finished tiny NICE run on moons."""
    (src,) = [
        p.parent
        for p in started_together.glob("outputs/*/*/metrics.json")
        if json.loads(p.read_text())["data"] == "moons"
    ]
    return Path(shutil.copytree(src, dst))


def test_runs_started_together_keep_both_outputs(started_together):
    """Two runs launched in the same second get two dirs (the default run dir is unique)."""
    found = sorted(
        json.loads(p.read_text())["data"] for p in started_together.glob("outputs/*/*/metrics.json")
    )
    assert found == ["8gaussians", "moons"]


def test_a_dir_holding_a_run_is_refused_and_left_untouched(tmp_path, started_together):
    run = finished_run(started_together, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    done = genlab(*tiny_overrides("nice", "8gaussians"), f"hydra.run.dir={run}")
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "train.resume=true" in err[0], done.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resuming_with_other_settings_is_refused_before_hydra_writes(tmp_path, started_together):
    """The refusal comes from the preflight, so the run's own .hydra/config.yaml survives."""
    run = finished_run(started_together, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    done = genlab(
        *tiny_overrides("nice"), "train.lr=0.01", "train.resume=true", f"hydra.run.dir={run}"
    )
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "train.lr 0.001 in the file, 0.01 in the config" in err[0], err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_an_unwritable_run_dir_gives_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    done = genlab(*tiny_overrides("nice"), f"hydra.run.dir={blocker / 'run'}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"genlab: cannot write the run dir {blocker / 'run'}: {blocker} is not a directory; "
        "choose another with hydra.run.dir=..."
    ]


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lr=-1", "train.lr must be > 0, got -1"),
        ("model.couplings=abc", "model: couplings must be an int >= 1, got 'abc'"),
        ("device=cuda:7", "CUDA is not available"),
    ],
)
def test_config_errors_are_one_line_and_leave_no_files(tmp_path, override, message):
    run = tmp_path / "run"
    done = genlab(*tiny_overrides("nice"), override, f"hydra.run.dir={run}", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not run.exists()


def test_full_error_keeps_the_traceback(tmp_path):
    env = {**ENV, "HYDRA_FULL_ERROR": "1"}
    done = genlab(*tiny_overrides("nice"), "train.lr=-1", f"hydra.run.dir={tmp_path}/r", env=env)
    assert done.returncode != 0 and "Traceback" in done.stderr


# Long enough that the signal, sent once step 300 is logged, lands well before the end.
SIGNAL_STEPS = 2000
SIGNAL_RUN = [
    *tiny_overrides("nice"),
    "threads=1",
    f"train.steps={SIGNAL_STEPS}",
    "train.log_every=100",
    "train.checkpoint_every=0",
]
# What an uninterrupted run and a resumed one must share (timings and memory differ).
SAME_METRICS = ("nll", "test_entropy", "kl", "kl_se", "w2", "w2_floor", "params", "steps")


def _signal_mid_run(run: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a run, send ``sig`` once it has logged step 300, and wait for it to end."""
    cmd = [sys.executable, "-m", "genlab", *SIGNAL_RUN, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "step 300/" in line:
            proc.send_signal(sig)
            break
    out, _ = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(seen) + out, "")


def _weights(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)


def _history(run: Path) -> list[list[str]]:
    """history.csv's rows without their seconds column (wall time differs between runs)."""
    rows = [line.split(",") for line in (run / "history.csv").read_text().splitlines()]
    drop = rows[0].index("seconds")
    return [row[:drop] + row[drop + 1 :] for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The signal tests' reference: the same run never interrupted, trained once."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = genlab(*SIGNAL_RUN, f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    return run


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_resume_equals_an_uninterrupted_run(
    tmp_path, uninterrupted, sig
):
    stopped = _signal_mid_run(tmp_path / "stopped", sig)
    name = signal.Signals(sig).name
    assert stopped.returncode == 128 + sig, stopped.stdout[-2000:]
    assert f"by {name}: resume with" in stopped.stdout
    step = _weights(tmp_path / "stopped")["trainer"]["step"]
    assert 300 <= step < SIGNAL_STEPS
    assert (
        f"stopped at step {step} of stage 0 by {name}"
        in (tmp_path / "stopped" / "genlab.log").read_text()
    )
    resumed = genlab(*SIGNAL_RUN, "train.resume=true", f"hydra.run.dir={tmp_path / 'stopped'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "stopped")["model"], _weights(uninterrupted)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = _history(tmp_path / "stopped")
    assert len(history) == 1 + SIGNAL_STEPS and history == _history(uninterrupted)
    got, want = (
        json.loads((r / "metrics.json").read_text()) for r in (tmp_path / "stopped", uninterrupted)
    )
    assert {k: got[k] for k in SAME_METRICS} == {k: want[k] for k in SAME_METRICS}


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    """``failing_sweep(launcher)``: the sweep dir and the command's result of a two-job tiny
    NICE sweep whose first job diverges (lr 1e6), run once per launcher for the module."""
    sweeps = {}

    def get(launcher: str) -> tuple[Path, subprocess.CompletedProcess]:
        if launcher not in sweeps:
            sweep = tmp_path_factory.mktemp(launcher) / "sweep"
            done = genlab(
                "-m",
                *[o for o in tiny_overrides("nice") if not o.startswith("train.steps")],
                "train.steps=30",
                "train.lr=1e6,1e-3",
                "train.grad_clip=null",
                f"hydra/launcher={launcher}",
                f"hydra.sweep.dir={sweep}",
            )
            sweeps[launcher] = sweep, done
        return sweeps[launcher]

    return get


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_failing_job_does_not_sink_its_sweep(failing_sweep, launcher):
    sweep, done = failing_sweep(launcher)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("genlab: 1 of 2 sweep jobs failed (0_nice_moons: Diverged:"), last
    assert json.loads((sweep / "0_nice_moons" / "error.json").read_text())["model"] == "nice"
    assert (sweep / "1_nice_moons" / "metrics.json").is_file()
    board = (sweep / "leaderboard.md").read_text()
    assert "| moons | nice |" in board and "## Failed runs" in board
    assert "| 0_nice_moons | nice | moons | Diverged: nice: loss is" in board
    assert (sweep / "gallery.png").is_file()


def test_a_sweep_dir_holding_runs_is_refused(tmp_path, failing_sweep):
    sweep = Path(shutil.copytree(failing_sweep("basic")[0], tmp_path / "sweep"))
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    done = genlab("-m", *tiny_overrides("nice"), f"hydra.sweep.dir={sweep}")
    assert done.returncode == 2 and "already holds runs" in done.stderr, done.stderr[-2000:]
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before
