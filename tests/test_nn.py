"""MLP and TimeMLP: shapes, validation, and the hand-written forward-mode Jacobian."""

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from genlab.nn import ACTIVATIONS, MLP, TimeMLP, fourier_frequencies, get_activation

EMBEDDINGS = ["concat", "sinusoidal"]


def make_field(activation="tanh", time_embedding="concat", seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"dim": 2, "hidden": 16, "depth": 3, "frequencies": 3} | kwargs
    field = TimeMLP(activation=activation, time_embedding=time_embedding, **kwargs)
    return field.double()


def autograd_jacobian(field, t, x):
    """Per-sample Jacobian of field(t, .) at each row of x, by autograd."""
    return torch.stack([jacobian(lambda y: field(t, y[None])[0], xi) for xi in x])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_match_autograd(name):
    f, df = ACTIVATIONS[name]
    z = torch.linspace(-5, 5, 101, dtype=torch.float64).requires_grad_(True)
    z = z[z.abs() > 1e-3]  # avoid the kink of relu at 0
    a = f(z)
    (grad,) = torch.autograd.grad(a.sum(), z)
    torch.testing.assert_close(df(z, a), grad, rtol=1e-12, atol=1e-12)


def test_unknown_activation_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown activation 'gelu'; choose one of: tanh"):
        get_activation("gelu")
    with pytest.raises(ValueError, match="gelu"):
        MLP(2, 2, activation="gelu")
    with pytest.raises(ValueError, match="gelu"):
        TimeMLP(activation="gelu")


@pytest.mark.parametrize("kwargs", [{"hidden": 0}, {"depth": 0}, {"hidden": 2.5}, {"depth": -1}])
def test_bad_sizes_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MLP(2, 2, **kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TimeMLP(**kwargs)


def test_bad_time_embedding_raises():
    with pytest.raises(ValueError, match="unknown time embedding 'fourier'; choose one of: concat"):
        TimeMLP(time_embedding="fourier")


def test_mlp_shapes_and_depth():
    net = MLP(3, 5, hidden=7, depth=4, zero_last=False)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 5
    assert net(torch.randn(11, 3)).shape == (11, 5)


def test_zero_last_gives_the_zero_function():
    x = torch.randn(8, 2)
    assert torch.equal(MLP(2, 2)(x), torch.zeros(8, 2))
    assert torch.equal(TimeMLP(zero_last=True)(0.3, x), torch.zeros(8, 2))
    assert TimeMLP()(0.3, x).abs().sum() > 0  # the field's default is a random start


@pytest.mark.parametrize("time_embedding", EMBEDDINGS)
def test_time_forms_agree(time_embedding):
    field = make_field(time_embedding=time_embedding)
    x = torch.randn(5, 2, dtype=torch.float64)
    v = field(torch.tensor(0.4, dtype=torch.float64), x)
    assert v.shape == (5, 2)
    torch.testing.assert_close(field(0.4, x), v, rtol=0, atol=1e-15)
    torch.testing.assert_close(field(torch.full((5,), 0.4, dtype=torch.float64), x), v)
    t = torch.rand(5, dtype=torch.float64)
    rows = torch.cat([field(ti, xi[None]) for ti, xi in zip(t, x, strict=True)])
    torch.testing.assert_close(field(t, x), rows, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="shape"):
        field(torch.zeros(3, dtype=torch.float64), x)


@pytest.mark.parametrize("time_embedding", EMBEDDINGS)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_forward_with_jacobian_matches_autograd(activation, time_embedding):
    field = make_field(activation, time_embedding)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    for t in [torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.73, dtype=torch.float64)]:
        v, jac = field.forward_with_jacobian(t, x)
        assert v.shape == (6, 2) and jac.shape == (6, 2, 2)
        torch.testing.assert_close(v, field(t, x), rtol=0, atol=1e-12)
        torch.testing.assert_close(jac, autograd_jacobian(field, t, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dim", [2, 3])
def test_fourier_features_keep_the_jacobian_exact(dim):
    torch.manual_seed(0)
    field = TimeMLP(dim, hidden=16, depth=2, activation="silu", fourier=8, fourier_scale=2.0)
    field = field.double()
    x = torch.randn(5, dim, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    v, jac = field.forward_with_jacobian(t, x)
    torch.testing.assert_close(v, field(t, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(jac, autograd_jacobian(field, t, x), rtol=0, atol=1e-10)
    assert "fourier_b" in field.state_dict()  # a loaded model gets the same features
    with pytest.raises(ValueError, match="fourier must be an int >= 0, got -1"):
        TimeMLP(dim, fourier=-1)


def test_forward_with_jacobian_in_higher_dimension_and_batched_time():
    field = make_field("silu", "sinusoidal", dim=3)
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.rand(4, dtype=torch.float64)
    v, jac = field.forward_with_jacobian(t, x)
    pairs = zip(t, x, strict=True)
    expected = torch.stack([autograd_jacobian(field, ti, xi[None])[0] for ti, xi in pairs])
    torch.testing.assert_close(v, field(t, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(jac, expected, rtol=0, atol=1e-10)


class _JacobianOf(nn.Module):
    """Exposes TimeMLP.forward_with_jacobian's J as forward, for torch.func.functional_call."""

    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, t, x):
        return self.field.forward_with_jacobian(t, x)[1]


@pytest.mark.parametrize("time_embedding", EMBEDDINGS)
@pytest.mark.parametrize("activation", ["tanh", "softplus", "silu", "elu"])
def test_jacobian_is_differentiable_wrt_parameters(activation, time_embedding):
    field = make_field(activation, time_embedding, hidden=3, depth=2, frequencies=2)
    module = _JacobianOf(field)
    names, params = zip(*module.named_parameters(), strict=True)
    t = torch.tensor(0.3, dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)

    def jac_of(*values):
        return torch.func.functional_call(module, dict(zip(names, values, strict=True)), (t, x))

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(jac_of, inputs, eps=1e-6, atol=1e-7)


def test_jacobian_loss_backpropagates_to_every_parameter():
    field = make_field("tanh", "sinusoidal")
    _, jac = field.forward_with_jacobian(0.5, torch.randn(7, 2, dtype=torch.float64))
    jac.diagonal(dim1=1, dim2=2).sum().backward()
    last_bias = field.net.layers[-1].bias
    assert last_bias.grad is None  # the only parameter J does not depend on
    for name, p in field.named_parameters():
        if p is not last_bias:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            assert torch.isfinite(p.grad).all(), name


def test_float32_and_devices_follow_the_input():
    field = TimeMLP(hidden=8, time_embedding="sinusoidal")
    x = torch.randn(4, 2)
    v, jac = field.forward_with_jacobian(torch.tensor(0.2, dtype=torch.float64), x)
    assert v.dtype == jac.dtype == torch.float32


def test_quasi_fourier_frequencies_are_one_well_spread_set_for_every_seed():
    torch.manual_seed(0)
    first = fourier_frequencies(256, 2, 0.5, "quasi")
    torch.manual_seed(1)
    assert torch.equal(first, fourier_frequencies(256, 2, 0.5, "quasi"))
    assert (first[:, 0] >= 0).all()  # one half-space: b and -b give the same features
    # no frequency twice, none at zero, and the second moments of N(0, 0.5^2 I)
    assert len(torch.unique(first, dim=0)) == 256 and first.norm(dim=1).min() > 0
    assert torch.allclose(first.square().mean(0), torch.full((2,), 0.25), rtol=0.05)
    # a random draw follows the run's generator, as it always has
    torch.manual_seed(2)
    drawn = fourier_frequencies(8, 1, 2.0)
    torch.manual_seed(2)
    assert torch.equal(drawn, torch.randn(8, 1) * 2.0)
    net = TimeMLP(dim=2, fourier=16, fourier_scale=0.5, fourier_draw="quasi")
    assert torch.equal(net.fourier_b, fourier_frequencies(16, 2, 0.5, "quasi"))
    with pytest.raises(ValueError, match="unknown fourier_draw 'sobol'; choose one of: random"):
        TimeMLP(dim=2, fourier=4, fourier_draw="sobol")


def test_quasi_blocks_are_consecutive_runs_of_one_sequence():
    whole = fourier_frequencies(64, 1, 0.5, "quasi")
    blocks = [fourier_frequencies(16, 1, 0.5, "quasi", block=k) for k in range(4)]
    assert torch.equal(torch.cat(blocks), whole)  # the union is the first 64 points
    assert torch.equal(blocks[0], fourier_frequencies(16, 1, 0.5, "quasi"))
    assert not torch.equal(blocks[0], blocks[1])
