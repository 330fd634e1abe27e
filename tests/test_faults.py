"""Faults a long sweep meets: a full disk, two writers, a damaged run, a huge request, a value
that only fails late, and an ASCII locale. Each ends in one line that says what happened and
how to go on, and leaves every file either whole or absent.

The full disk is a 2 MB tmpfs where the machine lets root mount one (a real ``ENOSPC`` in
torch's C++ writer), and a failing writer otherwise; two writers are two processes; damaged
runs are truncated and ill-typed files.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

import genlab
from genlab import files, memory
from genlab.cli import unknown_option
from genlab.configs import compose_config
from genlab.errors import ConfigError, RunDirError, TooLarge, WriteError
from genlab.figures import RunFigures
from genlab.fit import resumed_history
from genlab.report import main as report_main
from genlab.runner import build, check_memory, train
from genlab.runs import CHECKPOINT, RunLock, check_run_dir, load_checkpoint
from genlab.trainer import History
from tests.conftest import TINY, tiny_overrides
from tests.test_report import fake_run

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)
NICE = [*tiny_overrides("nice"), "train.steps=20", "train.checkpoint_every=5"]


def genlab_cmd(*args, env=ENV, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "genlab", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def temp_files(where: Path) -> list[Path]:
    return [p for p in where.rglob(".*") if files.is_temp(p)]


def no_figures(patch: pytest.MonkeyPatch) -> None:
    patch.setattr(RunFigures, "final", lambda *args, **kwargs: None)


# ------------------------------------------------------------------------- the writer
def test_an_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    files.write_json(target, {"kl": 1.0})
    with pytest.raises(KeyError), files.atomic(target) as tmp:
        tmp.write_text("half")
        raise KeyError("a bug mid-write: its own error, and nothing changes")
    assert json.loads(target.read_text()) == {"kl": 1.0}
    assert temp_files(tmp_path) == []
    with files.atomic(target) as a, files.atomic(target) as b:
        assert a != b and a.parent == b.parent == tmp_path  # two writers never share a temp
        a.write_text("{}")
        b.write_text("{}")


def test_a_full_disk_during_a_write_is_one_line_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"

    def torch_on_a_full_disk(tmp):
        tmp.write_bytes(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 1")

    monkeypatch.setattr(files.shutil, "disk_usage", lambda _: SimpleNamespace(free=0))
    with pytest.raises(WriteError) as err, files.atomic(target) as tmp:
        torch_on_a_full_disk(tmp)
    assert str(err.value) == f"no space left on device writing {target}" and err.value.full
    assert temp_files(tmp_path) == [] and not target.exists()
    monkeypatch.undo()
    with pytest.raises(WriteError, match="cannot write .*: Permission denied"):
        with files.atomic(target):
            raise PermissionError(errno.EACCES, "Permission denied")


def test_a_group_of_files_is_replaced_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "leaderboard.md", tmp_path / "gallery.png"
    a.write_text("old board")
    b.write_text("old gallery")
    with pytest.raises(WriteError), files.atomic_group([a, b]) as (ta, tb):
        ta.write_text("new board")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (a.read_text(), b.read_text()) == ("old board", "old gallery")
    assert temp_files(tmp_path) == []


# ------------------------------------------------------------------------- a full disk
def _disk_fills_at(patch: pytest.MonkeyPatch, name: str, after: int = 0) -> None:
    """Every write of a file called ``name`` after the first ``after`` ones fails as a full
    disk does: some bytes land, then ``ENOSPC``."""
    real, seen = files._fsync, []

    def fsync(path: Path) -> None:
        if path.name.startswith(f".{Path(name).stem}.tmp-") and path.suffix == Path(name).suffix:
            seen.append(path)
            if len(seen) > after:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    patch.setattr(files, "_fsync", fsync)


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_resumes(
    compose_cfg, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    no_figures(monkeypatch)
    _disk_fills_at(monkeypatch, CHECKPOINT, after=2)  # steps 5 and 10 are written, 15 is not
    with pytest.raises(WriteError) as err:
        train(compose_cfg(NICE), run)
    assert str(err.value) == (
        f"no space left on device writing {run / CHECKPOINT}; the last checkpoint (step 10) is "
        f"intact; free space and resume with train.resume=true hydra.run.dir={run}"
    )
    assert load_checkpoint(run)["trainer"]["step"] == 10 and temp_files(run) == []
    monkeypatch.undo()
    no_figures(monkeypatch)
    resumed = train(compose_cfg([*NICE, "train.resume=true"]), run)
    fresh = train(compose_cfg(NICE), tmp_path / "fresh")
    assert resumed["kl"] == fresh["kl"] and resumed["steps"] == 20
    assert (run / "history.csv").read_text().count("\n") == 21


def test_a_full_disk_at_the_final_files_resumes_to_them(compose_cfg, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _disk_fills_at(monkeypatch, "metrics.json")
    with pytest.raises(WriteError, match=r"metrics.json; the last checkpoint \(step 20\)"):
        train(compose_cfg(NICE), run)
    assert not (run / "metrics.json").exists() and temp_files(run) == []
    monkeypatch.undo()
    out = train(compose_cfg([*NICE, "train.resume=true"]), run)
    assert json.loads((run / "metrics.json").read_text())["kl"] == out["kl"]


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    try:
        return subprocess.run(cmd, capture_output=True).returncode == 0
    except OSError:
        return False


def test_a_real_full_disk_is_one_line_in_the_console_and_the_log(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the failing-writer tests stand in")
    try:
        run = disk / "run"
        # NICE at its own size: a 1.4 MB checkpoint, so the second one cannot fit beside it
        budget = ["train.steps=30", "train.checkpoint_every=10"]
        done = genlab_cmd("model=nice", *TINY, *budget, f"hydra.run.dir={run}")
        assert done.returncode == 1
        line = (
            f"genlab: no space left on device writing {run / CHECKPOINT}; the last checkpoint "
            f"(step 10) is intact; free space and resume with train.resume=true "
            f"hydra.run.dir={run}"
        )
        assert line in done.stderr.splitlines() and "Traceback" not in done.stderr
        assert line.removeprefix("genlab: ") in (run / "genlab.log").read_text()
        assert temp_files(run) == [] and load_checkpoint(run)["trainer"]["step"] == 10
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    "override,message",
    [
        ("seed=-1", "seed must be an int in [0, 4294967295], got -1"),
        ("train.data_seed=-2", "train.data_seed must be an int in [0, 4294967295] or null, got -2"),
        ("eval.n_test=0", "eval.n_test must be an int >= 2, got 0"),
        ("eval.n_w2=0", "eval.n_w2 must be an int >= 2, got 0"),
        ("eval.grid=0", "eval.grid must be an int >= 16, got 0"),
        ("eval.n_timing=0", "eval.n_timing must be an int >= 1, got 0"),
    ],
)
def test_every_value_is_checked_before_the_run_dir_exists(compose_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        build(compose_cfg([*NICE, override]), tmp_path / "run", preflight=True)
    assert str(err.value) == message and not (tmp_path / "run").exists()


def test_the_data_stream_follows_data_seed_alone(compose_cfg, tmp_path):
    """``train.data_seed`` seeds the data stream whatever the run's seed, and without it the
    stream follows the seed, as it always has."""

    def stream(*overrides):
        _, _, fit, _ = build(compose_cfg([*NICE, *overrides]), tmp_path / "run", preflight=True)
        return fit.data_gen.get_state()

    assert torch.equal(stream("seed=1", "train.data_seed=7"), stream("seed=2", "train.data_seed=7"))
    assert torch.equal(stream("seed=7"), stream("seed=3", "train.data_seed=7"))
    assert not torch.equal(stream("seed=1"), stream("seed=2"))


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.batch_size=100000000", "train.batch_size=100000000"),
        ("eval.n_test=200000000", "eval.n_test=200000000"),
        ("eval.n_w2=100000", "eval.n_w2=100000"),
        ("eval.grid=100000", "eval.grid=100000"),
    ],
)
def test_a_setting_whose_memory_would_not_fit_is_refused_naming_it(
    compose_cfg, tmp_path, monkeypatch, override, key
):
    monkeypatch.setattr(memory, "machine_memory", lambda device=None: 16 * 10**9)
    with pytest.raises(TooLarge) as err:
        build(compose_cfg([*NICE, override]), tmp_path / "run", preflight=True)
    assert re.fullmatch(
        rf"{key} needs about [\d.]+ [GT]B of memory, over half of the 16.0 GB this machine "
        "has; lower it",
        str(err.value),
    )


def test_the_batch_estimate_leaves_the_run_as_it_was(compose_cfg, tmp_path):
    """The memory probe trains nothing and draws nothing from the run's random streams."""
    torch.manual_seed(0)
    toy, model, _, _ = build(compose_cfg(tiny_overrides("glow")), tmp_path / "a")
    state = torch.get_rng_state()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    check_memory(compose_cfg([*tiny_overrides("glow"), "train.batch_size=100000"]), model, toy)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # ActNorm too


def test_a_run_dir_that_cannot_be_made_is_refused_by_a_real_write(tmp_path):
    with pytest.raises(RunDirError, match=r"cannot write the run dir /proc/genlab-x: /proc"):
        check_run_dir("/proc/genlab-x", resume=False)
    check_run_dir(tmp_path / "new" / "run", resume=False)
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing


def test_an_unknown_option_exits_2_with_hydras_list(tmp_path):
    missing = "In 'config': Could not find '{}'"
    assert unknown_option(["data=nonexistent", "train.steps=3"]) == missing.format(
        "data/nonexistent"
    )
    assert unknown_option(["-m", "model=nice,nope"]) == missing.format("model/nope")
    assert unknown_option(["data=moons", "model=nice", "seed=3"]) is None
    assert unknown_option(["-m", "model=glob(*)", "train.steps=x"]) is None  # not a missing one
    plugin = tmp_path / "conf" / "model"  # a plug-in's option, on Hydra's search path
    plugin.mkdir(parents=True)
    (plugin / "mine.yaml").write_text("# @package _global_\nmodel:\n  _target_: a.B\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    assert unknown_option([searchpath, "model=mine"]) is None
    done = genlab_cmd("data=nonexistent", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "Available options in 'data'" in done.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- one writer
HOLD = textwrap.dedent(
    """
    import sys, time
    from genlab.runs import RunLock
    with RunLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_one_run_dir_has_one_writer_and_a_dead_one_blocks_nothing(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        message = f"{run} is in use by another genlab process (PID {holder.pid})"
        with pytest.raises(RunDirError, match=re.escape(message)):
            check_run_dir(run, resume=True)
        with pytest.raises(RunDirError, match=re.escape(message)), RunLock(run):
            pass
        done = genlab_cmd(*NICE, "train.resume=true", f"hydra.run.dir={run}")
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"genlab: {message}: wait for it to end, or choose another hydra.run.dir"
        ]
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # Hydra wrote nothing
        done = genlab_cmd("-m", *NICE, "train.resume=true", f"hydra.sweep.dir={run}")
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"genlab: {message}: wait for it to end, or choose another hydra.sweep.dir"
        ]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".lock").exists()  # left by the killed holder: blocks nothing
    wreck = run / f".model.tmp-{holder.pid}-0a1b2c.pt"  # what a write killed mid-way leaves
    wreck.write_bytes(b"half a checkpoint")
    (run / ".notes.tmp-draft.txt").write_text("a user's file")
    check_run_dir(run, resume=True)
    with RunLock(run):
        assert (run / ".lock").read_text().strip() == str(os.getpid())
        assert not wreck.exists() and (run / ".notes.tmp-draft.txt").exists()


# ------------------------------------------------------------------------- a damaged run
def _trained(compose_cfg, run: Path, patch: pytest.MonkeyPatch, *extra: str) -> None:
    with patch.context() as p:
        no_figures(p)
        train(compose_cfg([*NICE, *extra]), run)


def test_a_history_cut_after_the_checkpoint_is_repaired_on_resume(
    compose_cfg, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    _trained(compose_cfg, run, monkeypatch)
    ckpt = load_checkpoint(run, keys=("model", "config", "trainer"))
    assert ckpt["trainer"]["step"] == 20
    text = (run / "history.csv").read_text()
    (run / "history.csv").write_text(text + "0,21,0.5")  # a row beyond it, cut mid-write
    history = History.read(run / "history.csv")
    assert len(history.rows) == 20 and history.damage == "line 22 is cut short"
    _trained(compose_cfg, run, monkeypatch, "train.resume=true", "train.steps=25")
    rows = History.read(run / "history.csv").rows
    assert [int(r["step"]) for r in rows] == list(range(1, 26))


def test_a_history_damaged_before_the_checkpoint_is_refused_in_one_line(
    compose_cfg, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    _trained(compose_cfg, run, monkeypatch)
    lines = (run / "history.csv").read_text().splitlines(keepends=True)
    (run / "history.csv").write_text("".join(lines[:15]) + lines[15][:9])  # cut mid-row
    before = (run / "history.csv").read_bytes()
    cfg = compose_cfg([*NICE, "train.resume=true", "train.steps=25"])
    with pytest.raises(genlab.errors.CheckpointError) as err:
        train(cfg, run)
    assert str(err.value) == (
        f"{run / 'history.csv'}: line 16 is cut short, so it ends at step 14 of stage 0, short "
        "of model.pt's step 20 of stage 0: restore it, or delete it to resume without the loss "
        "history up to that step"
    )
    assert (run / "history.csv").read_bytes() == before
    done = genlab_cmd(*NICE, "train.resume=true", "train.steps=25", f"hydra.run.dir={run}")
    assert done.returncode == 2 and done.stderr.strip() == f"genlab: {err.value}"
    (run / "history.csv").write_text(lines[0] + "0,x,1,1,1,,\n")
    assert History.read(run / "history.csv").damage.startswith("line 2 does not parse")


def test_a_checkpoint_at_the_start_of_a_stage_wants_the_history_of_the_stage_before(tmp_path):
    path = tmp_path / "history.csv"
    rows = [
        {"round": r, "step": k, "loss": 1, "lr": 1, "seconds": 1}
        for r, n in ((0, 4), (1, 2))
        for k in range(1, n + 1)
    ]
    History([{**row, "nfe_forward": "", "nfe_backward": ""} for row in rows]).write(path)
    kept = resumed_history(path, stage=1, step=0, before=4)  # stage 1 not begun: ends at 0/4
    assert [(int(r["round"]), int(r["step"])) for r in kept.rows][-1] == (0, 4)
    with pytest.raises(genlab.errors.CheckpointError, match="ends at step 2 of stage 1, short of"):
        resumed_history(path, stage=1, step=3, before=4)


def test_a_group_whose_second_rename_fails_names_it_and_leaves_no_temp(tmp_path, monkeypatch):
    a, b = tmp_path / "a.md", tmp_path / "b.png"
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(WriteError, match=f"cannot write {re.escape(str(b))}: Input/output error"):
        with files.atomic_group([a, b]) as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
    assert temp_files(tmp_path) == [] and not b.exists()


def _sweep(root: Path) -> Path:
    fake_run(root, "0_nice_moons", "nice", "moons", job=0)
    fake_run(root, "1_cnf_moons", "cnf", "moons", job=1)
    good = fake_run(root, "2_rectified_flow_moons", "rectified_flow", "moons", job=2)
    np.savez_compressed(
        good / "samples.npz", samples=np.zeros((10, 2)), log_density=np.zeros((4, 4)), bound=4.0
    )
    return root


def test_a_damaged_run_is_named_under_skipped_runs_and_the_rest_reported(tmp_path):
    root = _sweep(tmp_path)
    (root / "0_nice_moons" / "samples.npz").write_bytes(b"PK\x03\x04 truncated")
    metrics = json.loads((root / "1_cnf_moons" / "metrics.json").read_text())
    (root / "1_cnf_moons" / "metrics.json").write_text(json.dumps({**metrics, "kl": "abc"}))
    (root / "3_diffusion_moons" / ".hydra").mkdir(parents=True)  # killed before its metrics
    assert report_main([str(root)]) == 0
    board = (root / "leaderboard.md").read_text(encoding="utf-8")
    assert "| moons | rectified_flow |" in board and "| moons | nice |" not in board
    skipped = board.split("## Skipped runs")[1]
    assert (
        "| 0_nice_moons | samples.npz is damaged (BadZipFile: File is not a zip file) |" in skipped
    )
    assert "| 1_cnf_moons | metrics.json: kl is 'abc', not a number |" in skipped
    assert "| 3_diffusion_moons | no metrics.json (it did not finish) |" in skipped
    assert (root / "gallery.png").stat().st_size > 0


def test_a_report_that_fails_leaves_the_previous_one_whole(tmp_path, monkeypatch, capsys):
    root = _sweep(tmp_path)
    assert report_main([str(root)]) == 0
    before = {
        n: (root / n).read_bytes() for n in ("leaderboard.md", "leaderboard.csv", "gallery.png")
    }
    fake_run(root, "4_nice_rings", "nice", "rings", job=4)
    _disk_fills_at(monkeypatch, "gallery.png")
    assert report_main([str(root)]) == 1
    err = capsys.readouterr().err
    assert f"genlab-report: no space left on device writing {root / 'gallery.png'}" in err
    assert {n: (root / n).read_bytes() for n in before} == before
    assert temp_files(root) == []


def test_the_report_under_an_ascii_locale_writes_utf8(tmp_path):
    root = _sweep(tmp_path)
    env = {**ENV, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env.pop("PYTHONIOENCODING", None)
    cmd = [sys.executable, "-m", "genlab.report", str(root)]
    done = subprocess.run(cmd, capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert "0.100 ± 0.010" in (root / "leaderboard.md").read_text(encoding="utf-8")
    assert b"0.100 ? 0.010" in done.stdout  # the console gets what its encoding can show


# ------------------------------------------------------------------------- huge requests
def test_a_large_sample_is_drawn_in_chunks_from_one_generator():
    model = instantiate(compose_config(["model=nice", *tiny_overrides("nice")[2:]]).model)
    model.chunk = 100
    whole = model.sample(250, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    inner = type(model).sample.__wrapped__
    parts = torch.cat([inner(model, k, gen) for k in (100, 100, 50)])
    assert torch.equal(whole, parts)
    x = torch.randn(250, 2)
    assert torch.equal(model.log_prob(x), torch.cat([model.log_prob(c) for c in x.split(100)]))

    class Spy(type(model)):  # a plug-in's own methods are chunked too
        def sample(self, n, generator=None):
            seen.append(n)
            return super().sample(n, generator)

        def log_prob(self, x):
            seen.append(len(x))
            return super().log_prob(x)

    spy, seen = Spy(couplings=2, hidden=16, depth=1), []
    spy.chunk = 100
    assert spy.sample(250).shape == (250, 2) and seen == [100, 100, 50]
    seen.clear()
    assert spy.log_prob(x).shape == (250,) and seen == [100, 100, 50]
    with pytest.raises(TooLarge, match=r"sample\(100,000,000,000,000\) of nice needs about"):
        model.sample(10**14)


MEMORY = textwrap.dedent(
    """
    import resource, torch
    from hydra.utils import instantiate
    from genlab.configs import compose_config
    model = instantiate(compose_config(["model=rectified_flow"]).model).requires_grad_(False)
    model.sample(1000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = model.sample(400_000, steps=1)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(x.shape[0], grown * 1024)
    """
)


def test_a_large_sample_takes_a_chunk_of_memory_not_the_whole_request_of_it():
    """Unchunked, 400,000 rectified-flow samples hold about 750 MB of activations at once (a
    million: 1.9 GB); in chunks of 65,536, about 180 MB whatever the size."""
    done = subprocess.run([sys.executable, "-c", MEMORY], capture_output=True, text=True, env=ENV)
    n, grown = map(int, done.stdout.split())
    assert n == 400_000 and grown < 400e6, f"{grown / 1e6:.0f} MB"


def test_a_refused_checkpoint_names_the_object_and_never_advises_loading_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": os.system}, run / CHECKPOINT)
    with pytest.raises(genlab.errors.CheckpointError) as err:
        load_checkpoint(run)
    message = str(err.value)
    assert "posix.system" in message and "\n" not in message
    assert "weights_only" not in message and "will likely succeed" not in message
