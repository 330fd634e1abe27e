"""The sweep report, the yardstick's fixed points and sweeps through Hydra's launchers."""

import json
import logging
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.configs import get_toy
from genlab.metrics import kl_to_truth, wasserstein2
from genlab.models.base import Model
from genlab.report import (
    collect,
    draw_gallery,
    leaderboard_markdown,
    main,
    median_run,
    order_markdown,
    quality_points,
    seed_groups,
    setting_labels,
    sweep_order,
    write_report,
)
from tests.conftest import tiny_sweep


class Truth(Model):
    """A data set's own log_prob and sampler wrapped as a model: KL must be 0."""

    name = "truth"

    def __init__(self, toy):
        super().__init__()
        self.toy = toy
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def log_prob(self, x):
        return self.toy.log_prob(x.double())  # exact, not rounded to the samples' float32

    def sample(self, n, generator=None):
        return self.toy.sample(n, generator)


@pytest.mark.parametrize("name", ["moons", "checkerboard"])
def test_kl_of_the_truth_is_zero(name):
    toy = get_toy(name)
    out = kl_to_truth(Truth(toy), toy, 2000, torch.Generator().manual_seed(0))
    assert abs(out["kl"]) <= max(3 * out["kl_se"], 1e-12)
    assert out["nll"] == pytest.approx(out["test_entropy"])


def test_w2_of_data_against_itself_is_zero_and_the_floor_is_small():
    toy = get_toy("8gaussians")
    g = torch.Generator().manual_seed(0)
    x = toy.sample(500, g)
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-12)
    floor = wasserstein2(toy.sample(500, g), toy.sample(500, g))
    shifted = wasserstein2(x, x + torch.tensor([1.0, 0.0]))
    assert 0 < floor < shifted == pytest.approx(1.0, abs=1e-6)


def fake_run(root, name, model, data, job=None, **extra):
    """A run dir with metrics.json and, given ``job``, Hydra's ``.hydra/hydra.yaml``."""
    run = root / name
    run.mkdir(parents=True)
    if job is not None:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "hydra.yaml").write_text(
            f"hydra:\n  job:\n    name: genlab\n    num: {job}\n"
        )
    metrics = {
        "model": model,
        "data": data,
        "kl": 0.1,
        "kl_se": 0.01,
        "w2": 0.3,
        "w2_floor": 0.2,
        "train_seconds": 12.0,
        "steps": 100,
        **extra,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_report_keeps_good_runs_and_names_the_bad(tmp_path, capsys):
    fake_run(tmp_path, "0", "nice", "moons", nice_floor=0.0358)
    fake_run(tmp_path, "1", "cnf", "moons", nfe=40)
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "metrics.json").write_text("{not json")
    runs, problems = collect(tmp_path)
    assert [r["model"] for r in runs] == ["cnf", "nice"]  # no job numbers: alphabetical
    assert len(problems) == 1 and problems[0].startswith("2: metrics.json is not JSON")
    assert main([str(tmp_path)]) == 0
    board = (tmp_path / "leaderboard.md").read_text()
    assert "| moons | nice | 0.100 ± 0.010 | 0.0358 | 0.30 / 0.20 |" in board
    assert "| moons | cnf |" in board
    assert (tmp_path / "leaderboard.csv").read_text().count("\n") == 3
    assert (tmp_path / "gallery.png").stat().st_size > 0


def test_report_draws_w2_against_the_nfe_each_run_recorded(tmp_path):
    scores = {"w2_ddim1": 2.0, "nfe_ddim1": 1, "w2_ddim10": 0.4, "nfe_ddim10": 10}
    fake_run(tmp_path, "0", "diffusion", "moons", job=0, **scores, w2_euler3=0.5)
    flow = {"round0_w2_midpoint1": 0.9, "round0_nfe_midpoint1": 2, "round1_w2_midpoint1": 0.3}
    fake_run(tmp_path, "1", "rectified_flow", "moons", job=1, **flow, round1_nfe_midpoint1=2)
    fake_run(tmp_path, "2", "nice", "moons", job=2)
    runs, _ = collect(tmp_path)
    assert quality_points(runs[0]) == {"diffusion, ddim": {1: 2.0, 10: 0.4}}  # w2_euler3: no NFE
    assert quality_points(runs[1]) == {
        "rectified_flow round 0, midpoint (ODE)": {2: 0.9},
        "rectified_flow round 1, midpoint (ODE)": {2: 0.3},
    }
    assert quality_points(runs[2]) == {}
    write_report(tmp_path)
    assert (tmp_path / "quality_vs_nfe.png").stat().st_size > 0


def test_report_without_few_step_scores_draws_no_quality_figure(tmp_path):
    fake_run(tmp_path, "0", "nice", "moons")
    write_report(tmp_path)
    assert not (tmp_path / "quality_vs_nfe.png").exists()


# Job numbers in the order of `-m model=rectified_flow,cnf data=moons,checkerboard` (less one
# job): neither alphabetical, nor the run dirs' names, nor the old hand-kept registry's order.
SWEEP = [("rectified_flow", "moons"), ("rectified_flow", "checkerboard"), ("cnf", "moons")]


@pytest.mark.parametrize("hydra", [True, False])
def test_report_orders_data_and_models_as_swept_else_alphabetically(tmp_path, hydra):
    for job, (model, data) in enumerate(SWEEP):
        fake_run(tmp_path, f"{9 - job}_{model}_{data}", model, data, job=job if hydra else None)
    runs, _ = collect(tmp_path)
    got = [(r["data"], r["model"]) for r in runs]
    if hydra:
        assert got == [
            ("moons", "rectified_flow"),
            ("moons", "cnf"),
            ("checkerboard", "rectified_flow"),
        ]
        assert [r["job"] for r in runs] == [0, 2, 1]
    else:
        assert got == [
            ("checkerboard", "rectified_flow"),
            ("moons", "cnf"),
            ("moons", "rectified_flow"),
        ]
        assert [r["job"] for r in runs] == [None] * 3


def test_a_folder_of_several_sweeps_takes_each_in_its_own_order(tmp_path):
    # Two sweeps, each numbering its jobs from 0, as when a stopped sweep is finished into a
    # second folder: the first folder's order, then the second's, never a shuffle by job number.
    for job, (model, data) in enumerate([("cnf", "rings"), ("cnf", "moons")]):
        fake_run(tmp_path / "a", f"{job}_{model}_{data}", model, data, job=job)
    for job, (model, data) in enumerate([("nice", "checkerboard"), ("nice", "rings")]):
        fake_run(tmp_path / "b", f"{job}_{model}_{data}", model, data, job=job)
    for sweep in ("a", "b"):
        (tmp_path / sweep / "multirun.yaml").write_text("hydra: {}\n")
    runs, _ = collect(tmp_path)
    assert sweep_order(runs, "data") == ["rings", "moons", "checkerboard"]
    assert sweep_order(runs, "model") == ["cnf", "nice"]
    assert [r["run"] for r in runs] == [
        "a/0_cnf_rings",
        "b/1_nice_rings",
        "a/1_cnf_moons",
        "b/0_nice_checkerboard",
    ]


def test_run_dirs_nested_by_the_subdir_pattern_stay_one_sweep_in_job_order(tmp_path):
    # hydra.sweep.subdir=${model}/${data}: the run dirs' parents differ, the sweep is one.
    for job, (model, data) in enumerate([("rectified_flow", "moons"), ("cnf", "checkerboard")]):
        fake_run(tmp_path, f"{model}/{data}", model, data, job=job)
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    runs, _ = collect(tmp_path)
    assert sweep_order(runs, "model") == ["rectified_flow", "cnf"]
    assert sweep_order(runs, "data") == ["moons", "checkerboard"]


def test_report_refuses_a_single_run_dir_and_names_its_sweep(tmp_path, capsys):
    run = fake_run(tmp_path / "sweep", "0_nice_moons", "nice", "moons", job=0)
    assert main([str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{run} is a single run" in err and "expected a sweep dir" in err
    assert err.rstrip().endswith(str(tmp_path / "sweep"))
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "metrics.json"]
    assert main([str(tmp_path / "sweep")]) == 0


@pytest.mark.parametrize("n", [1, 2])
def test_report_log_line_counts_runs_in_words(tmp_path, caplog, n):
    for i in range(n):
        fake_run(tmp_path, str(i), "nice", ["moons", "rings"][i])
    with caplog.at_level(logging.INFO, logger="genlab"):
        write_report(tmp_path)
    assert f"report of {n} {'run' if n == 1 else 'runs'} written" in caplog.text


@pytest.mark.parametrize(
    "seconds, shown",
    [(0.3, "0.30"), (0.0589, "0.06"), (12.04, "12.0"), (91.0, "91.0"), (1234.4, "1234")],
)
def test_leaderboard_shows_train_seconds_to_three_figures(seconds, shown):
    row = {"model": "nice", "data": "moons", "kl": 0.1, "w2": 0.3, "train_seconds": seconds}
    line = leaderboard_markdown([row]).splitlines()[2]
    assert line.split(" | ")[6] == shown


@pytest.mark.parametrize("datas", [["moons"], ["moons", "8gaussians", "rings"]])
def test_gallery_title_and_labels_lie_inside_the_canvas(tmp_path, datas):
    sweep = tmp_path / "2026-11-26_23-06-39_a_long_sweep_name"
    rng = np.random.default_rng(0)
    for job, data in enumerate(datas):
        run = fake_run(sweep, f"{job}_rectified_flow_{data}", "rectified_flow", data, job=job)
        np.savez(
            run / "samples.npz",
            samples=rng.normal(size=(100, 2)),
            log_density=rng.normal(size=(8, 8)),
            bound=4.0,
        )
    runs, _ = collect(sweep)
    fig = draw_gallery(sweep, runs)
    fig.canvas.draw()
    paper, inked = fig.bbox_inches, fig.get_tightbbox()  # inches
    assert paper.x0 <= inked.x0 and inked.x1 <= paper.x1
    assert paper.y0 <= inked.y0 and inked.y1 <= paper.y1
    (title,) = fig.texts
    assert title.get_text() == f"genlab gallery: {sweep.name}"
    labels = [t for ax in fig.axes for t in (ax.title, ax.yaxis.label) if t.get_text()]
    for text in [title, *labels]:
        box = text.get_window_extent()  # pixels
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, text.get_text()
        assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, text.get_text()


@pytest.mark.parametrize("make", ["missing", "empty", "only_bad"])
def test_report_on_nothing_says_why(tmp_path, make, capsys):
    target = tmp_path / "sweep"
    if make != "missing":
        target.mkdir()
    if make == "only_bad":
        (target / "0").mkdir()
        (target / "0" / "metrics.json").write_text("[]")
    assert main([str(target)]) == 1
    err = capsys.readouterr().err
    assert str(target) in err
    assert {"missing": "no such sweep dir", "empty": "no runs", "only_bad": "1 skipped"}[
        make
    ] in err
    with pytest.raises((FileNotFoundError, ValueError)):
        write_report(target)


# The basic launcher's sweep and its report: test_lifecycle.py's sweep with a failing job.
@pytest.mark.parametrize("launcher", ["submitit_local"])
def test_multirun_sweep_writes_runs_and_report(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    cmd = tiny_sweep(
        f"hydra.sweep.dir={sweep}",
        f"hydra/launcher={launcher}",
    )
    if launcher == "submitit_local":
        cmd += ["hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a torch thread per job: two cores, two tests
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in sweep.glob("*/metrics.json")) == ["metrics.json"] * 2
    assert {p.parent.name for p in sweep.glob("*/metrics.json")} == {
        "0_nice_moons",
        "1_nice_8gaussians",
    }
    board = (sweep / "leaderboard.md").read_text()
    assert "| moons | nice |" in board and "| 8gaussians | nice |" in board
    assert board.index("| moons |") < board.index("| 8gaussians |")  # the sweep's order
    assert (sweep / "gallery.png").is_file()


def fake_gif(run, frames: int, size: tuple[int, int]) -> None:
    """A flow.gif whose frames are flat colours, each different."""
    images = [Image.new("RGB", size, (40 * k, 200 - 40 * k, 90)) for k in range(frames)]
    images[0].save(run / "flow.gif", save_all=True, append_images=images[1:], duration=80)


def test_report_animates_the_gallery_only_on_request(tmp_path, capsys):
    fake_gif(fake_run(tmp_path, "0_nice_moons", "nice", "moons", job=0), 3, (60, 64))
    fake_gif(fake_run(tmp_path, "1_cnf_moons", "cnf", "moons", job=1), 2, (120, 64))  # 2 panels
    fake_run(tmp_path, "2_cnf_rings", "cnf", "rings", job=2)  # made with plots.animate=false
    assert main([str(tmp_path)]) == 0
    assert not (tmp_path / "gallery.gif").exists()
    assert main(["--animate", str(tmp_path)]) == 0
    with Image.open(tmp_path / "gallery.gif") as gif:
        assert gif.n_frames == 3  # the longest clip; the shorter one holds its last frame
        first = np.asarray(gif.convert("RGB"))
        gif.seek(2)
        last = np.asarray(gif.convert("RGB"))
    assert (first != last).any()


def test_report_asked_to_animate_runs_without_gifs_says_why(tmp_path, capsys):
    fake_run(tmp_path, "0_nice_moons", "nice", "moons", job=0)
    assert main(["--animate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plots.animate=false" in err
    assert (tmp_path / "leaderboard.md").is_file()  # the rest of the report is written


def test_leaderboard_flags_a_run_trained_far_below_its_models_median_speed(tmp_path):
    """Seconds differ several-fold between machines and under contention: the report gives
    each model's median steps/s and where the runs trained, and flags a run at under half
    its model's median (the machine was busy), not one merely a little slower."""
    for i, (data, rate) in enumerate([("moons", 500.0), ("rings", 480.0), ("2spirals", 150.0)]):
        fake_run(
            tmp_path,
            f"{i}_rf_{data}",
            "rectified_flow",
            data,
            job=i,
            steps_per_second=rate,
            machine="Some CPU, 1 thread",
        )
    fake_run(tmp_path, "3_nice_moons", "nice", "moons", job=3, steps_per_second=90.0)
    for i, seconds in enumerate([30.0, 50.0, 41.0]):  # what evaluation cost, beside it
        path = tmp_path / f"{i}_rf_{['moons', 'rings', '2spirals'][i]}" / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "eval_seconds": seconds}))
    runs, _ = collect(tmp_path)
    board = leaderboard_markdown(runs)
    assert "Median seconds of evaluation and figures per run: rectified_flow 41.0." in board
    rows = {line.split(" | ")[0].strip("| "): line for line in board.splitlines()[2:6]}
    assert rows["2spirals"].split(" | ")[7] == "100 †"
    assert "†" not in rows["moons"] and "†" not in rows["rings"]
    assert "Median steps/s per model in this sweep: rectified_flow 480, nice 90.0" in board
    assert "(on Some CPU, 1 thread)" in board
    assert "under 0.5x its model's median" in board


def seeded_run(root, name, model, data, seed, kl, job, *extra, **metrics):
    """A fake run of a sweep over seeds: its metrics and Hydra's record of its overrides."""
    run = fake_run(root, name, model, data, job=job, seed=seed, kl=kl, **metrics)
    overrides = [f"model={model}", f"data={data}", f"seed={seed}", *extra]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return run


def test_a_sweep_over_seeds_reports_each_settings_median_and_range(tmp_path):
    for job, (seed, kl) in enumerate([(0, 0.3), (1, 0.1), (2, 0.2)]):
        seeded_run(tmp_path, f"{job}_nice_moons", "nice", "moons", seed, kl, job)
    seeded_run(tmp_path, "3_cnf_moons", "cnf", "moons", 0, 0.05, 3)
    runs, _ = collect(tmp_path)
    groups = seed_groups(runs)
    assert [[m["seed"] for m in g] for g in groups] == [[0, 1, 2], [0]]
    assert [median_run(g)["run"] for g in groups] == ["2_nice_moons", "3_cnf_moons"]
    board = leaderboard_markdown(runs)
    row = "| moons | nice | 0, 1, 2 | 0.200 [0.100, 0.300] |  | 0.30 / 0.20 |  | 12.0 | 100 |"
    assert row in board
    assert "| moons | cnf | 0 | 0.050 |  | 0.30 / 0.20 |" in board
    write_report(tmp_path)
    assert "0.200 [0.100, 0.300]" in (tmp_path / "leaderboard.md").read_text()
    assert (tmp_path / "leaderboard.csv").read_text().count("\n") == 5  # every run


def test_runs_of_other_settings_are_never_merged_as_seeds(tmp_path):
    seeded_run(tmp_path, "0_nice_moons", "nice", "moons", 0, 0.1, 0, "train.lr=0.01")
    seeded_run(tmp_path, "1_nice_moons", "nice", "moons", 0, 0.2, 1, "train.lr=0.001")
    runs, _ = collect(tmp_path)
    assert len(seed_groups(runs)) == 2
    board = leaderboard_markdown(runs)
    assert "| KL (nats) |" in board and board.count("| moons | nice |") == 2


def test_settings_are_labelled_by_the_overrides_that_tell_them_apart(tmp_path):
    for seed in (0, 1):
        for job, draw in enumerate(("random", "quasi")):
            name = f"{2 * seed + job}_nice_moons"
            extra = ("experiment=compare", f"model.fourier_draw={draw}")
            seeded_run(tmp_path, name, "nice", "moons", seed, 0.1 + job, 2 * seed + job, *extra)
    runs, _ = collect(tmp_path)
    groups = seed_groups(runs)
    labels = setting_labels(groups)
    assert labels == ["nice (model.fourier_draw=random)", "nice (model.fourier_draw=quasi)"]
    board = leaderboard_markdown(runs)
    assert "| moons | nice (model.fourier_draw=quasi) | 0, 1 |" in board


def test_the_order_of_settings_is_stated_only_where_their_seed_ranges_do_not_overlap(tmp_path):
    kls = {  # moons: cnf and rf overlap, nice lies above both; rings: a single run takes no part
        ("cnf", "moons"): (0.10, 0.12, 0.30),
        ("rectified_flow", "moons"): (0.11, 0.13, 0.14),
        ("nice", "moons"): (0.31, 0.40, 0.50),
        ("cnf", "rings"): (0.2,),
        ("nice", "rings"): (0.1, 0.3),
    }
    job = 0
    for (model, data), values in kls.items():
        for seed, kl in enumerate(values):
            seeded_run(tmp_path, f"{job}_{model}_{data}", model, data, seed, kl, job)
            job += 1
    runs, _ = collect(tmp_path)
    groups = seed_groups(runs)
    order = order_markdown(groups, setting_labels(groups))
    assert "- moons: cnf, rectified_flow < nice\n" in order
    assert "rings" not in order  # only one of its settings has two seeds
    assert order in leaderboard_markdown(runs)
    one_seed = [g[:1] for g in groups]
    assert order_markdown(one_seed, setting_labels(one_seed)) == ""


def test_a_sweep_over_seeds_and_data_sets_tables_each_cells_range_and_spread(tmp_path):
    """One row per setting, one column per data set: the median KL with its [min, max], and
    max / min over the seeds; a model without a density by its W2; a KL within 3 standard
    errors of 0 marks its ratio as the yardstick's noise."""
    cells = {  # (model, data): [(kl, kl_se, w2)] by seed
        ("nice", "moons"): [(0.3, 0.01, 0.3), (0.1, 0.01, 0.3), (0.2, 0.01, 0.3)],
        ("nice", "rings"): [(0.5, 0.01, 0.4), (0.4, 0.01, 0.4), (0.6, 0.01, 0.4)],
        ("nsf", "moons"): [(0.002, 0.001, 0.2), (0.004, 0.001, 0.2), (0.003, 0.001, 0.2)],
        ("meanflow", "moons"): [(None, None, 0.25), (None, None, 0.20), (None, None, 0.30)],
    }
    job = 0
    for (model, data), runs in cells.items():
        for seed, (kl, se, w2) in enumerate(runs):
            name = f"{job}_{model}_{data}"
            seeded_run(tmp_path, name, model, data, seed, kl, job, kl_se=se, w2=w2)
            job += 1
    runs, _ = collect(tmp_path)
    board = leaderboard_markdown(runs)
    assert "| setting | moons | rings |" in board
    assert "| nice | 0.200 [0.100, 0.300] | 0.500 [0.400, 0.600] |" in board
    assert "| nsf | 0.003 [0.002, 0.004] |  |" in board
    assert "| meanflow | W2 0.25 / 0.20 |  |" in board
    assert "| nice | 3.00 | 1.50 |" in board
    assert "| nsf | 2.00 * |  |" in board  # 0.002 < 3 x 0.001: noise
    assert "| meanflow | W2 1.50 |  |" in board
    one_data = [m for m in runs if m["data"] == "moons"]
    assert "| setting |" not in leaderboard_markdown(one_data)  # one column: the rows say it
