# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A new model in 40 lines
#
# A model is one class and one YAML; nothing in genlab changes. Here: a mixture of K
# Gaussians fitted by maximum likelihood, written to a module of its own, with its config in
# a config dir of its own that Hydra's search path picks up. The real `genlab -m` command
# sweeps it over two toys, and the sweep's report ranks and draws it like any shipped model.
#
# `QUICK=1` shrinks the budgets to seconds (the test suite runs this notebook that way).

# %%
import os
import sys
import tempfile
from pathlib import Path

import genlab

QUICK = os.environ.get("QUICK") == "1"
work = Path(tempfile.mkdtemp(prefix="genlab-plugin-"))

# %% [markdown]
# ## The class
# A `genlab.models.Model` needs a `name`, `loss`, `log_prob` and `sample`; the trainer,
# the yardstick, the figures and the report use nothing else.

# %%
MODEL = '''
import math
import torch
from torch import nn
from genlab.models import Model


class GaussianMixture(Model):
    """K isotropic Gaussians with learned weights, means and scales."""

    name = "mixture"

    def __init__(self, components: int = 8, dim: int = 2) -> None:
        super().__init__()
        self.dim = dim
        self.logits = nn.Parameter(torch.zeros(components))
        self.means = nn.Parameter(2 * torch.randn(components, dim))
        self.log_scales = nn.Parameter(torch.zeros(components))

    def log_prob(self, x):
        d = (x[:, None, :] - self.means) / self.log_scales.exp()[:, None]
        per = -0.5 * (d * d).sum(-1) - self.dim * (self.log_scales + 0.5 * math.log(2 * math.pi))
        return torch.logsumexp(per + self.logits.log_softmax(0), dim=1)

    def loss(self, x):
        return -self.log_prob(x).mean()

    def sample(self, n, generator=None):
        device = self.means.device
        k = torch.multinomial(self.logits.softmax(0), n, True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=device)
        return self.means[k] + z * self.log_scales.exp()[k, None]
'''
(work / "my_mixture.py").write_text(MODEL)

# %% [markdown]
# ## The config
# Every model config has one shape: the model under `model:`, its own budget under `train:`.

# %%
conf = work / "conf" / "model"
conf.mkdir(parents=True)
(conf / "mixture.yaml").write_text(
    """# @package _global_
model:
  _target_: my_mixture.GaussianMixture
  components: 8
train:
  steps: 2000
  lr: 0.02
"""
)

# %% [markdown]
# ## A sweep with it
# The module must be importable by the sweep's jobs, and the config dir on Hydra's search
# path.

# %%
paths = [str(work), os.environ.get("PYTHONPATH", "")]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
sys.path.insert(0, str(work))
overrides = [f"hydra.searchpath=[file://{work / 'conf'}]", "plots.animate=false"]
overrides += ["train.progress=false"]
if QUICK:
    overrides += ["train.steps=100", "eval.n_test=1000", "eval.n_w2=300", "eval.n_timing=300"]
    overrides += ["eval.grid=24"]
sweep = genlab.sweep(model="mixture", data=["8gaussians", "moons"], overrides=overrides)

# %%
for row in sweep.leaderboard:
    w2 = f"W2 {row['w2']:.3f} / floor {row['w2_floor']:.3f}"
    print(f"{row['data']:>10} {row['model']}: KL {row['kl']:.3f}, {w2}")
print(sweep.dir / "leaderboard.md", sweep.dir / "gallery.png")

# %% [markdown]
# A mixture of eight Gaussians can fit 8gaussians almost exactly, and not the moons. The run
# loads like any other; its class lives outside genlab, so name its module as trusted:

# %%
run = genlab.load(sweep.runs[0].dir, trusted=["my_mixture"])
print(run.model.sample(3))
