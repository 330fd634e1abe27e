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
# # A normalizing flow against a diffusion model, on rings
#
# Four thin rings are hard for NICE (its Jacobian determinant is constant, so it can only
# move mass, never compress it) and easy for a diffusion model. We train both on the same
# data with the same seed, in one sweep, and compare them with the same yardstick: the KL to
# the exact density, and W2 beside the data's own floor.
#
# `QUICK=1` shrinks every budget to seconds (the test suite runs this notebook that way).

# %%
import os

import matplotlib.pyplot as plt

import genlab

QUICK = os.environ.get("QUICK") == "1"
common = ["plots.animate=false", "train.progress=false"]
if QUICK:
    common += ["train.steps=100", "eval.n_test=500", "eval.n_w2=200", "eval.n_timing=200"]
    common += ["eval.grid=16"]

# %% [markdown]
# Each model brings its own training budget (NICE 5,000 steps, diffusion 20,000; see
# `genlab --help`). Diffusion's likelihood is an ODE solve (its probability-flow ODE), NICE's
# is closed form, so the solver's tolerance is one of diffusion's settings: in a quick run we
# loosen it.

# %%
nice = genlab.train(model="nice", data="rings", overrides=common)
loose = ["model.likelihood.atol=1e-4", "model.likelihood.rtol=1e-4"] if QUICK else []
diffusion = genlab.train(model="diffusion", data="rings", overrides=[*common, *loose])

# %%
for run in (nice, diffusion):
    m = run.metrics
    floor = f" (its floor {m['nice_floor']:.4f})" if "nice_floor" in m else ""
    print(
        f"{m['model']:>10}: KL {m['kl']:.3f} ± {m['kl_se']:.3f}{floor}, "
        f"W2 {m['w2']:.3f} / floor {m['w2_floor']:.3f}, {m['steps']} steps"
    )

# %% [markdown]
# ## The densities side by side
# Each `density.png` shows the truth, the model and their log ratio.

# %%
fig, axes = plt.subplots(2, 1, figsize=(12, 8))
for ax, run in zip(axes, (nice, diffusion), strict=True):
    ax.imshow(plt.imread(run.figures["density"]))
    ax.set_axis_off()
    ax.set_title(run.metrics["model"])
plt.show()

# %% [markdown]
# Diffusion also writes `trajectories.png` and `density_t.png`: the noise carried to the
# rings by its probability-flow ODE, and p_t along the way.

# %%
print(sorted(diffusion.figures))
