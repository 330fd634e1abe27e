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
# # Your first flow
#
# Train NICE on the two moons, read its scores, draw from it, evaluate its exact density and
# look at the figures the run wrote. Every number here comes from the run itself.
#
# `QUICK=1` in the environment shrinks the budget to seconds (the test suite runs this
# notebook that way); unset, NICE trains for its default 5,000 steps (about a minute on a
# laptop CPU).

# %%
import os

import matplotlib.pyplot as plt
import torch

import genlab

QUICK = os.environ.get("QUICK") == "1"
quick = [
    "train.steps=200",
    "eval.n_test=1000",
    "eval.n_w2=300",
    "eval.n_timing=300",
    "eval.grid=32",
]
budget = quick if QUICK else []

# %% [markdown]
# ## Train
# `genlab.train` composes the same config as the command line
# `genlab model=nice data=moons ...`, with the same checks and the same run dir under
# `outputs/`. Overrides are the command line's own strings.

# %%
run = genlab.train(
    model="nice",
    data="moons",
    overrides=[*budget, "plots.animate=false", "train.progress=false"],
)
print(run.dir)

# %% [markdown]
# ## Scores
# `kl` is the KL divergence from the data to the model, in nats, on fresh samples (0 is
# perfect); NICE cannot go below `nice_floor` on this toy, since its Jacobian determinant is
# the same everywhere. `w2` is the exact Wasserstein-2 distance to fresh data, beside
# `w2_floor`, the distance between two draws of the data itself.

# %%
m = run.metrics
print(f"KL {m['kl']:.3f} ± {m['kl_se']:.3f} nats (floor {m['nice_floor']:.4f})")
print(f"W2 {m['w2']:.3f} (data's own floor {m['w2_floor']:.3f})")
print(f"{m['steps']} steps in {m['train_seconds']:.1f} s")

# %% [markdown]
# ## Sample and evaluate
# `run.model` is the trained model, its parameters frozen. `log_prob` is exact: NICE's
# couplings have unit Jacobian determinant, so the density is the prior's at the latent point
# times the scaling layer's constant.

# %%
model = run.model
x = model.sample(2000, torch.Generator().manual_seed(0))
logp = model.log_prob(x)
truth = run.toy.log_prob(x)
print(x.shape, logp.shape)
print(f"mean log q(x) = {logp.mean():.3f}, mean log p(x) = {truth.mean():.3f} on model samples")

z, log_det = model(x)  # data to latent
assert torch.allclose(model.inverse(z), x, atol=1e-4)  # the inverse is exact

# %% [markdown]
# ## The figures
# Every run writes `samples.png` and `density.png` (truth, model and their log ratio);
# `run.figures` maps their names to paths.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, name in zip(axes, ("samples", "density"), strict=True):
    ax.imshow(plt.imread(run.figures[name]))
    ax.set_axis_off()
    ax.set_title(name)
plt.show()

# %% [markdown]
# A finished run loads again from its dir, in this session or another:

# %%
again = genlab.load(run.dir)
assert again.metrics == run.metrics
