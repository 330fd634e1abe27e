"""NICE: unit-determinant couplings, the scaling layer, a constant log-det, bad input."""

import math

import pytest
import torch

from genlab.models.nice import NICE, AdditiveCoupling, DiagonalScaling


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    """Random weights everywhere (the zero-initialised last layers too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


@pytest.fixture
def x64():
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("fourier", [0, 4])
@pytest.mark.parametrize("parity", [0, 1])
@pytest.mark.parametrize("activation", ["relu", "tanh", "silu"])
def test_coupling_inverse_and_unit_determinant(parity, activation, fourier, x64):
    layer = AdditiveCoupling(
        2, parity, hidden=16, depth=2, activation=activation, fourier=fourier
    ).double()
    randomize(layer, seed=parity)
    y, log_det = layer(x64)
    assert torch.equal(log_det, torch.zeros(64, dtype=torch.float64))
    assert torch.allclose(layer.inverse(y), x64, atol=1e-12, rtol=0)
    assert not torch.allclose(y, x64)  # the layer does something
    unchanged = 1 - parity  # coordinate the MLP reads
    assert torch.equal(y[:, unchanged], x64[:, unchanged])
    for point in x64[:8]:
        jac = torch.autograd.functional.jacobian(lambda p: layer(p[None])[0][0], point)
        assert abs(torch.linalg.det(jac).item() - 1.0) < 1e-12


def test_scaling_log_det():
    layer = DiagonalScaling(2).double()
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor([0.3, -1.2], dtype=torch.float64))
    x = torch.randn(5, 2, dtype=torch.float64)
    y, log_det = layer(x)
    assert torch.allclose(log_det, torch.full((5,), -0.9, dtype=torch.float64))
    assert torch.allclose(layer.inverse(y), x, atol=1e-14)


@pytest.fixture
def nice():
    torch.manual_seed(0)  # the Fourier frequencies
    model = NICE(couplings=4, hidden=16, depth=2, activation="tanh", fourier=4, fourier_scale=0.5)
    model = model.double()
    randomize(model, seed=1, scale=0.4)
    return model


def test_nice_log_det_is_the_scaling_layers_constant(nice, x64):
    """Inverse, autograd log-det and normalisation are checked for every flow in
    test_invertible.py; NICE's log-det is the same at every point."""
    _, log_det = nice(x64)
    assert torch.equal(log_det, nice.scaling.log_scale.sum().expand(64))


def test_nice_sample_shapes_and_determinism(nice):
    a = nice.sample(7, torch.Generator().manual_seed(3))
    b = nice.sample(7, torch.Generator().manual_seed(3))
    assert a.shape == (7, 2) and a.dtype == torch.float64
    assert torch.equal(a, b)


def test_loss_is_mean_nll(nice, x64):
    assert math.isclose(nice.loss(x64).item(), -nice.log_prob(x64).mean().item())


@pytest.mark.parametrize("bad", [torch.zeros(5, 3), torch.zeros(5), torch.zeros(2, 5, 2)])
def test_log_prob_rejects_bad_shape(nice, bad):
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        nice.log_prob(bad.double())


@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_sample_rejects_bad_count(nice, n):
    with pytest.raises(ValueError, match=repr(n)):
        nice.sample(n)


def test_a_nice_without_features_has_the_state_dict_of_one_from_before_features():
    """A NICE with ``fourier=0`` has no feature buffers (so checkpoints of such models, which
    hold none, load), and one with features saves its frequencies."""
    plain, featured = NICE(couplings=2, fourier=0), NICE(couplings=2, fourier=3)
    assert not any("fourier" in key for key in plain.state_dict())
    assert featured.state_dict()["layers.0.fourier_b"].shape == (3, 1)
    torch.manual_seed(5)
    other = NICE(couplings=2, fourier=3)
    other.load_state_dict(featured.state_dict())
    x = torch.randn(7, 2)
    assert torch.equal(other(x)[0], featured(x)[0])


def test_bad_construction():
    with pytest.raises(ValueError, match="prior 'gauss'"):
        NICE(prior="gauss")
    with pytest.raises(ValueError, match="couplings"):
        NICE(couplings=0)
    with pytest.raises(ValueError, match="fourier must be an int >= 0, got -1"):
        NICE(fourier=-1)
    with pytest.raises(ValueError, match="fourier_scale must be > 0, got 0"):
        NICE(fourier=4, fourier_scale=0)
