"""NICE: additive coupling layers, a diagonal scaling layer, exact inverse and likelihood.

References:
    Dinh, Krueger, Bengio. "NICE: Non-linear Independent Components Estimation" (2014).
"""

from __future__ import annotations

import re

from torch import nn

from genlab.models.invertible import InvertibleFlow
from genlab.models.layers import AdditiveCoupling, DiagonalScaling, alternating

__all__ = ["AdditiveCoupling", "DiagonalScaling", "NICE"]


class NICE(InvertibleFlow):
    """A stack of alternating additive couplings followed by one diagonal scaling layer.

    ``forward`` maps data to latent, ``z = S(c_K(...c_1(x)))``; the density is
    ``log p(x) = log p_prior(z) + sum(log_scale)``, since every coupling has unit determinant.

    Arguments:
        dim: dimension of the data (2 for the toys).
        couplings: number of coupling layers (alternating which half is shifted).
        hidden, depth, activation: size of each coupling MLP.
        prior: ``normal`` or ``logistic``.
        fourier, fourier_scale: random Fourier features of ``x_a`` that each coupling MLP
            reads beside ``x_a`` (see :class:`AdditiveCoupling`; 0: none).
        fourier_draw: how their frequencies are chosen (``random`` | ``quasi``; each coupling
            takes its own run of the quasi-random sequence).
        identity_init: start every coupling as the identity (zero last layers). Off by default:
            from torch's default initialisation NICE fits thin structure (2spirals) better in a
            short budget. On rings and circles ``E[x_b | x_a] = 0`` in every frame, which pulls
            each shift of raw ``x_a`` back to zero from either start; Fourier features of
            ``x_a`` let the shifts move.

    References:
        Dinh, Krueger, Bengio. "NICE: Non-linear Independent Components Estimation" (2014).
    """

    name = "nice"
    constant_log_det = True  # the couplings' log-det is 0, the scaling's a constant

    def __init__(
        self,
        dim: int = 2,
        couplings: int = 16,
        hidden: int = 64,
        depth: int = 2,
        activation: str = "tanh",
        prior: str = "normal",
        identity_init: bool = False,
        fourier: int = 16,
        fourier_scale: float = 0.5,
        fourier_draw: str = "random",
    ) -> None:
        conditioner = (
            hidden,
            depth,
            activation,
            identity_init,
            fourier,
            fourier_scale,
            fourier_draw,
        )
        shears = alternating(AdditiveCoupling, couplings, dim, *conditioner)
        super().__init__(dim, [*shears, DiagonalScaling(dim)], prior)
        self._register_load_state_dict_pre_hook(_rename_old_keys)

    @property
    def couplings(self) -> nn.ModuleList:
        """The additive couplings, in the data-to-latent order."""
        return self.layers[:-1]

    @property
    def scaling(self) -> DiagonalScaling:
        """The diagonal scaling layer, last in the data-to-latent order."""
        return self.layers[-1]


def _rename_old_keys(state_dict, prefix, *args) -> None:
    """Load NICE checkpoints written before the flows shared :class:`InvertibleFlow`, which
    kept the layers as ``couplings.<k>`` and ``scaling``: those keys become ``layers.<k>`` and
    ``layers.<couplings>``, the same tensors in the same order."""
    old = [k for k in state_dict if k.startswith(prefix + "couplings.")]
    if not old and prefix + "scaling.log_scale" not in state_dict:
        return
    couplings = 1 + max((int(k[len(prefix) :].split(".")[1]) for k in old), default=-1)
    for key in [k for k in list(state_dict) if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        new = re.sub(r"^couplings\.", "layers.", rest)
        new = re.sub(r"^scaling\.", f"layers.{couplings}.", new)
        if new != rest:
            state_dict[prefix + new] = state_dict.pop(key)
