"""The eight toys: samplers, exact log-densities, entropies, constant-Jacobian floors."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from genlab.configs import data_options, get_toy

ENTROPY = {
    "8gaussians": 2.8319,
    "moons": 2.3939,
    "checkerboard": 3.4657,
    "2spirals": 2.6455,
    "pinwheel": 2.3178,
    "rings": 2.6232,
    "circles": 3.2681,
    "swissroll": 2.6696,
}
NAMES = list(ENTROPY)


def grid(bound: float, h: float) -> tuple[torch.Tensor, float]:
    """Midpoints of an h-grid on [-bound, bound]^2 (B, 2) and the cell area."""
    m = round(2 * bound / h)
    c = -bound + h * (torch.arange(m, dtype=torch.float64) + 0.5)
    return torch.cartesian_prod(c, c), h * h


def test_the_shipped_toys_are_the_eight_and_each_config_builds_its_own():
    assert sorted(data_options()) == sorted(NAMES)
    assert all(get_toy(name).name == name for name in NAMES)
    with pytest.raises(ValueError, match="unknown data set 'moon'; choose one of: .*moons"):
        get_toy("moon")


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtype_and_determinism(name):
    toy = get_toy(name)
    assert toy.sample(1).shape == (1, 2)
    x = toy.sample(1000, torch.Generator().manual_seed(1))
    assert x.shape == (1000, 2) and x.dtype == torch.float32
    assert torch.equal(x, toy.sample(1000, torch.Generator().manual_seed(1)))
    assert not torch.equal(x, toy.sample(1000, torch.Generator().manual_seed(2)))
    assert toy.log_prob(x).shape == (1000,) and toy.log_prob(x).dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_moments_match_the_definition(name):
    toy = get_toy(name)
    x = toy.sample(200_000, torch.Generator().manual_seed(3)).double()
    n = len(x)
    mean = torch.tensor(toy.mean, dtype=torch.float64)
    cov = torch.tensor(toy.covariance, dtype=torch.float64)
    se_mean = x.std(0) / math.sqrt(n)
    assert ((x.mean(0) - mean).abs() < 5 * se_mean).all(), (x.mean(0), mean)
    d = x - mean
    products = d[:, :, None] * d[:, None, :]  # (n, 2, 2)
    se_cov = products.std(0) / math.sqrt(n)
    assert ((products.mean(0) - cov).abs() < 5 * se_cov + 1e-12).all(), (products.mean(0), cov)


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one(name):
    toy = get_toy(name)
    pts, area = grid(toy.bound, 0.05)
    mass = toy.log_prob(pts).exp().sum().item() * area
    assert abs(mass - 1) < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_histogram_agrees_with_the_density(name):
    """Chi-square test of 1e5 samples against the density integrated over 24 x 24 bins."""
    toy = get_toy(name)
    bins, sub = 24, 6
    b = toy.bound
    x = toy.sample(100_000, torch.Generator().manual_seed(4)).double().numpy()
    edges = np.linspace(-b, b, bins + 1)
    observed, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    pts, area = grid(b, 2 * b / (bins * sub))  # sub x sub midpoints per bin
    p = toy.log_prob(pts).exp().numpy().reshape(bins, sub, bins, sub)
    expected = p.sum(axis=(1, 3)) * area * len(x)
    keep = expected >= 5
    obs = np.append(observed[keep], observed[~keep].sum() + (len(x) - observed.sum()))
    exp = np.append(expected[keep], len(x) - expected[keep].sum())
    chi2 = ((obs - exp) ** 2 / np.maximum(exp, 1e-9)).sum()
    p_value = stats.chi2.sf(chi2, df=len(obs) - 1)
    assert p_value > 1e-3, (chi2, len(obs), p_value)


@pytest.mark.parametrize("name", NAMES)
def test_grid_entropy_matches_the_table(name):
    assert abs(get_toy(name).entropy() - ENTROPY[name]) < 2e-3


def test_checkerboard_support():
    toy = get_toy("checkerboard")
    # x1 in [-4, -2): floor(x1/2) = -2 is even, so x2 in [0, 2) or [-4, -2); and so on.
    inside = torch.tensor([[-3.0, 1.0], [-1.0, 3.0], [1.0, -3.0], [3.0, -1.0]])
    outside = torch.tensor([[-3.0, 3.0], [-1.0, 1.0], [1.0, 3.0], [5.0, 0.0]])
    assert torch.isfinite(toy.log_prob(inside)).all()
    assert torch.allclose(toy.log_prob(inside), torch.full((4,), -math.log(32)))
    assert torch.isneginf(toy.log_prob(outside)).all()
    x = toy.sample(10_000, torch.Generator().manual_seed(0))
    assert torch.isfinite(toy.log_prob(x)).all()


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_sample_count(n):
    with pytest.raises(ValueError, match=r"number of samples must be an int >= 1, got " + repr(n)):
        get_toy("moons").sample(n)


def test_numpy_sample_counts_are_accepted():
    assert get_toy("moons").sample(np.int64(3)).shape == (3, 2)


@pytest.mark.parametrize("name", NAMES)
def test_every_toy_has_its_constant_jacobian_floor(name):
    floor = get_toy(name).constant_log_det_floor
    assert isinstance(floor, float) and 0 <= floor < 1
    if name == "checkerboard":
        assert floor == 1 - math.log(2)


@pytest.mark.parametrize("name", ["moons", "swissroll", "2spirals"])
def test_curve_quadrature_agrees_with_a_4x_finer_rule(name):
    toy, fine = get_toy(name), get_toy(name)
    fine.panel = toy.panel / 4
    x = toy.sample(5000, torch.Generator().manual_seed(5)).double()
    assert (toy.log_prob(x) - fine.log_prob(x)).abs().max() < 1e-9


@pytest.mark.parametrize("shape", [(5, 3), (5,), (2, 2, 2)])
def test_bad_log_prob_shape(shape):
    with pytest.raises(ValueError, match=r"shape \(B, 2\), got " + re_shape(shape)):
        get_toy("rings").log_prob(torch.zeros(shape))


def re_shape(shape) -> str:
    return r"\(" + r", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + r"\)"
