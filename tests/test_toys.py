"""The eight toys: samplers, exact log-densities, entropies, constant-Jacobian floors."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from genlab.configs import data_options, get_toy
from genlab.data import (
    Checkerboard,
    Circles,
    EightGaussians,
    Moons,
    Pinwheel,
    Rings,
    SwissRoll,
    TwoSpirals,
)
from genlab.data.base import toy_label

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

# The same toys with other constants: every test of a sampler or a density holds for them too.
OTHER = {
    "8gaussians torchcfm": lambda: EightGaussians(radius=5.0, sigma=0.1**0.25),
    "8gaussians 5 modes": lambda: EightGaussians(radius=3.0, sigma=0.3, modes=5),
    "moons wide": lambda: Moons(scale=3.0, offset=(-1.0, -1.0), sigma=0.15),
    "checkerboard flow_matching": lambda: Checkerboard(scale=1 / 0.45),
    "2spirals one turn": lambda: TwoSpirals(scale=0.5, turns=1.0, sigma=0.15),
    "pinwheel 3 arms": lambda: Pinwheel(
        arms=3, rate=0.4, radial_std=0.25, tangential_std=0.08, scale=1.5
    ),
    "rings 2": lambda: Rings(radii=(2.0, 1.0), sigma=0.15),
    "circles 3": lambda: Circles(radii=(3.5, 2.0, 0.5), sigma=0.1),
    "swissroll loose": lambda: SwissRoll(scale=0.25, sigma=0.3),
}
CASES = NAMES + list(OTHER)


def make(case: str):
    """The toy of a test case: a shipped config by name, or one of :data:`OTHER`."""
    return OTHER[case]() if case in OTHER else get_toy(case)


def box(toy) -> tuple[float, float]:
    """The half-width and step of a grid that integrates the toy: its box at step 0.05, but
    for the checkerboard a grid whose cells tile its squares (a midpoint rule on cells that
    straddle an edge of a uniform density is off by the straddled share)."""
    if isinstance(toy, Checkerboard):
        return 2 * toy.scale, toy.scale / 40
    return toy.bound, 0.05


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


@pytest.mark.parametrize("name", CASES)
def test_shapes_dtype_and_determinism(name):
    toy = make(name)
    assert toy.sample(1).shape == (1, 2)
    x = toy.sample(1000, torch.Generator().manual_seed(1))
    assert x.shape == (1000, 2) and x.dtype == torch.float32
    assert torch.equal(x, toy.sample(1000, torch.Generator().manual_seed(1)))
    assert not torch.equal(x, toy.sample(1000, torch.Generator().manual_seed(2)))
    assert toy.log_prob(x).shape == (1000,) and toy.log_prob(x).dtype == torch.float32


@pytest.mark.parametrize("name", CASES)
def test_moments_match_the_definition(name):
    toy = make(name)
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


@pytest.mark.parametrize("name", CASES)
def test_density_integrates_to_one(name):
    toy = make(name)
    pts, area = grid(*box(toy))
    mass = toy.log_prob(pts).exp().sum().item() * area
    assert abs(mass - 1) < 1e-3


@pytest.mark.parametrize("name", CASES)
def test_histogram_agrees_with_the_density(name):
    """Chi-square test of 1e5 samples against the density integrated over 24 x 24 bins."""
    toy = make(name)
    bins = 24
    b = box(toy)[0]
    sub = max(6, math.ceil(2 * b / bins / 0.05))  # midpoints at most 0.05 apart in each bin
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


@pytest.mark.parametrize("case", list(OTHER))
def test_other_constants_are_named_and_drop_the_floor_computed_at_the_defaults(case):
    toy = make(case)
    assert toy.custom and toy.label.startswith(f"{toy.name} (")
    if toy.name == "checkerboard":  # 1 - log 2 holds for any uniform density
        assert toy.constant_log_det_floor == 1 - math.log(2)
    else:
        assert toy.constant_log_det_floor is None
    x = toy.sample(20_000, torch.Generator().manual_seed(9))
    assert (x.abs() < toy.bound).all()  # the box grows to hold the toy


def test_the_defaults_written_to_ten_digits_are_the_defaults():
    toy = EightGaussians(radius=2.828854314, sigma=0.353606789)
    assert toy.custom == {} and toy.radius == 4 / 1.414 and toy.label == "8gaussians"
    assert toy.constant_log_det_floor == 0.0008 and toy.bound == 5.0
    assert repr(toy) == "EightGaussians()"
    for name in NAMES:  # the shipped configs build the default toys
        assert get_toy(name).custom == {}, name
    wide = EightGaussians(radius=5.0)
    assert wide.bound == 7.0 and repr(wide) == "EightGaussians(radius=5.0)"
    assert toy_label("moons", {"sigma": 0.3, "offset": [-1.0, -1.0]}) == (
        "moons (sigma=0.3, offset=(-1, -1))"
    )


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Moons(sigma=0), "moons sigma must be > 0, got 0.0"),
        (lambda: Moons(offset=(1.0, 2.0, 3.0)), r"moons offset must be a pair, got \(1.0, 2.0, 3"),
        (lambda: EightGaussians(modes=0), "8gaussians modes must be an int >= 1, got 0"),
        (lambda: Pinwheel(arms=2), "pinwheel arms must be an int >= 3, got 2"),
        (lambda: Rings(radii=()), r"rings radii must list at least one radius, got \(\)"),
        (lambda: Circles(radii=(3.0, -1.0)), r"circles radii must be > 0, got -1.0"),
        (lambda: Checkerboard(scale="2"), "checkerboard scale must be a number, got '2'"),
        (lambda: TwoSpirals(turns=float("nan")), "2spirals turns must be finite, got nan"),
    ],
)
def test_bad_constants_are_refused_naming_them(build, message):
    with pytest.raises(ValueError, match=message):
        build()


CURVES = ["moons", "swissroll", "2spirals", "moons wide", "2spirals one turn", "swissroll loose"]


@pytest.mark.parametrize("name", CURVES)
def test_curve_quadrature_agrees_with_a_4x_finer_rule(name):
    toy, fine = make(name), make(name)
    fine.panel = toy.panel / 4
    x = toy.sample(5000, torch.Generator().manual_seed(5)).double()
    assert (toy.log_prob(x) - fine.log_prob(x)).abs().max() < 1e-9


@pytest.mark.parametrize("shape", [(5, 3), (5,), (2, 2, 2)])
def test_bad_log_prob_shape(shape):
    with pytest.raises(ValueError, match=r"shape \(B, 2\), got " + re_shape(shape)):
        get_toy("rings").log_prob(torch.zeros(shape))


def re_shape(shape) -> str:
    return r"\(" + r", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + r"\)"


# -- classes: the parts a toy's samples are drawn from, with exact conditional densities --

LABELLED = {
    "8gaussians": 8,
    "moons": 2,
    "checkerboard": 8,
    "2spirals": 2,
    "pinwheel": 5,
    "rings": 4,
    "circles": 2,
}


def test_the_toys_with_natural_classes_have_them_and_the_others_refuse_labels():
    assert {name: get_toy(name).classes for name in NAMES if get_toy(name).classes} == LABELLED
    toy = get_toy("swissroll")
    with pytest.raises(ValueError, match="swissroll has no classes"):
        toy.sample_labelled(3)
    with pytest.raises(ValueError, match="swissroll has no classes"):
        toy.log_prob(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))


LABELLED_CASES = list(LABELLED) + [c for c in OTHER if not c.startswith("swissroll")]


@pytest.mark.parametrize("name", LABELLED_CASES)
def test_labelled_samples_are_the_samples_and_their_classes_have_the_class_probs(name):
    toy = make(name)
    x = toy.sample(40_000, torch.Generator().manual_seed(6))
    xl, y = toy.sample_labelled(40_000, torch.Generator().manual_seed(6))
    assert torch.equal(x, xl) and y.dtype == torch.long and y.shape == (40_000,)
    counts = torch.bincount(y, minlength=toy.classes).numpy()
    probs = np.array(toy.class_probs)
    assert abs(probs.sum() - 1) < 1e-12
    assert stats.chisquare(counts, probs * len(y)).pvalue > 1e-3
    # a point's own class explains it at least as well as the others almost always
    per = torch.stack([toy.log_prob(x, torch.full_like(y, k)) for k in range(toy.classes)], 1)
    own = per.gather(1, y[:, None])[:, 0]
    assert torch.isfinite(own).all()
    assert (own[:, None] >= per).all(1).double().mean() > 0.99


@pytest.mark.parametrize("name", LABELLED_CASES)
def test_each_class_integrates_to_one_and_their_mixture_is_the_density(name):
    toy = make(name)
    pts, area = grid(*box(toy))
    y = torch.zeros(len(pts), dtype=torch.long)
    per = torch.stack([toy.log_prob(pts, y + k) for k in range(toy.classes)], 1)
    for k in range(toy.classes):
        assert abs(per[:, k].exp().sum().item() * area - 1) < 2e-3, k
    near = toy.sample(4000, torch.Generator().manual_seed(7)).double()
    far = 2.5 * toy.bound * (torch.rand(1000, 2, generator=torch.Generator().manual_seed(8)) - 0.5)
    x = torch.cat([near, far.double(), pts[::97]])
    per = torch.stack([toy.log_prob(x, torch.full((len(x),), k)) for k in range(toy.classes)], 1)
    mixture = torch.logsumexp(per + torch.tensor(toy.class_probs, dtype=torch.float64).log(), 1)
    p = toy.log_prob(x)
    assert torch.equal(torch.isfinite(mixture), torch.isfinite(p))
    shown = torch.isfinite(p)
    assert (mixture[shown] - p[shown]).abs().max() < 1e-10


@pytest.mark.parametrize(
    "y, message",
    [
        (torch.zeros(4), "integer tensor of shape .B,., got torch.float32"),
        (torch.zeros(4, 1, dtype=torch.long), r"got torch.int64 of shape \(4, 1\)"),
        (torch.zeros(3, dtype=torch.long), "3 classes for 4 points"),
        (torch.tensor([0, 1, 8, 2]), "class 8 of 8gaussians: classes are 0..7"),
        (torch.tensor([0, -1, 0, 2]), "class -1 of 8gaussians"),
        ([0, 1, 2, 3], "integer tensor of shape .B,., got <class 'list'>"),
    ],
)
def test_bad_classes_are_refused_naming_them(y, message):
    with pytest.raises(ValueError, match=message):
        get_toy("8gaussians").log_prob(torch.zeros(4, 2), y)
