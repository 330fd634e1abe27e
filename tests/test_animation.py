"""flow.gif: what moves is chosen by the model's capabilities, and plots.animate turns it off.

The GIF of every model through the real command (frames, size) is checked in test_cli.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from genlab import plots
from genlab.runner import train
from tests.conftest import tiny_overrides


def test_resample_keeps_the_states_and_interpolates_linearly_between_them():
    states = np.random.default_rng(0).normal(size=(5, 7, 2))  # 4 intervals
    out = plots.resample(states, frames=9)  # 2 frames per interval
    assert out.shape == (9, 7, 2)
    np.testing.assert_array_equal(out[::2], states)
    np.testing.assert_allclose(out[1::2], (states[:-1] + states[1:]) / 2, rtol=0, atol=1e-15)


def test_resample_works_on_density_grids_too():
    grids = np.stack([np.zeros((3, 3)), np.ones((3, 3))])
    np.testing.assert_allclose(plots.resample(grids, 5)[:, 0, 0], [0, 0.25, 0.5, 0.75, 1])


def test_animate_flow_writes_one_gif_frame_per_caption(tmp_path):
    """Two panels, one over a density and one over the data: a frame per caption, all of one
    size, each different from the one before (the points move)."""
    rng = np.random.default_rng(0)
    points = plots.resample(rng.normal(size=(2, 50, 2)), frames=5)
    log_density = plots.resample(rng.normal(size=(2, 6, 6)), frames=5)
    panels = [plots.Panel("over p_t", points, log_density), plots.Panel("over data", points)]
    captions = [f"t = {t:.2f}" for t in np.linspace(0, 1, 5)]
    path = tmp_path / "flow.gif"
    plots.animate_flow(panels, captions, rng.normal(size=(200, 2)), 4.0, "a title", path)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        frames = []
        for k in range(5):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB")))
    assert len({f.shape for f in frames}) == 1 and frames[0].shape[1] > frames[0].shape[0]
    assert all((a != b).any() for a, b in zip(frames[:-1], frames[1:], strict=True))


@pytest.fixture
def panels(monkeypatch):
    """The panels and captions of every animation, recorded instead of drawn (test_cli.py
    draws each model's GIF through the command line)."""
    seen = []
    monkeypatch.setattr(
        plots, "animate_flow", lambda panels, captions, *a: seen.append((panels, captions))
    )
    return seen


@pytest.fixture
def no_still_figures(monkeypatch):
    """The still figures are not drawn (test_cli.py checks them through the command line)."""
    for name in (
        "plot_samples",
        "plot_density",
        "plot_trajectories",
        "plot_density_snapshots",
        "plot_quality_vs_steps",
    ):
        monkeypatch.setattr(plots, name, lambda *args, **kwargs: None)


@pytest.mark.usefixtures("no_still_figures")
def test_nice_pushes_its_noise_through_each_layer(compose_cfg, tmp_path, panels):
    train(compose_cfg([*tiny_overrides("nice"), "plots.animate=true"]), tmp_path)
    ((panel,), captions) = panels[0]
    assert panel.points.shape == (plots.FRAMES, 300, 2) and panel.log_density is None
    # 2 couplings + the scaling layer: 3 layers over 48 frame intervals, 16 frames each
    assert captions[0] == "noise" and captions[16] == "layer 1 of 3"
    assert captions[17] == "layer 2 of 3" and captions[-1] == "layer 3 of 3"


@pytest.mark.usefixtures("no_still_figures")
def test_reflow_rounds_move_side_by_side(compose_cfg, tmp_path, panels):
    overrides = [*tiny_overrides("rectified_flow"), "model.reflow=1", "plots.animate=true"]
    train(compose_cfg(overrides), tmp_path)
    (rounds, captions) = panels[0]
    assert [p.label for p in rounds] == ["round 0", "round 1"]
    for p in rounds:
        assert p.points.shape == (plots.FRAMES, 300, 2) and p.log_density is None
    assert captions[0] == "t = 0.00" and captions[-1] == "t = 1.00"


@pytest.mark.usefixtures("no_still_figures")
def test_an_ode_model_moves_over_its_own_p_t(compose_cfg, tmp_path, panels):
    train(compose_cfg([*tiny_overrides("rectified_flow"), "plots.animate=true"]), tmp_path)
    ((panel,), captions) = panels[0]
    assert panel.points.shape == (plots.FRAMES, 300, 2)
    assert panel.log_density.shape == (plots.FRAMES, 8, 8)
    # p_0 is the standard normal prior: its log-density on the grid, exactly
    centres = plots.grid_points(4.0, 8).numpy()  # moons' bound
    prior = -0.5 * (centres**2).sum(1) - np.log(2 * np.pi)
    np.testing.assert_allclose(panel.log_density[0].ravel(), prior, rtol=1e-5)
    assert captions[24] == "t = 0.50"


def test_plots_animate_false_writes_no_gif(compose_cfg, tmp_path, panels):
    train(compose_cfg([*tiny_overrides("nice"), "plots.animate=false"]), tmp_path)
    assert not (tmp_path / "flow.gif").exists() and not panels
    assert (tmp_path / "samples.png").is_file()
