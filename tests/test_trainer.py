"""The training loop: schedule, budgets, history, failing loudly on a diverging loss."""

import math

import pytest
import torch

from genlab.models import NICE
from genlab.trainer import History, Trainer, lr_factor


def test_lr_schedule():
    assert lr_factor(0, 0.0, "cosine", warmup_steps=4) == 0.25
    assert lr_factor(3, 0.0, "cosine", warmup_steps=4) == 1.0
    assert lr_factor(10, 0.5, "cosine", warmup_steps=0) == pytest.approx(0.5)
    assert lr_factor(10, 1.0, "cosine", warmup_steps=0) == pytest.approx(0.0)
    assert lr_factor(10, 0.7, "constant", warmup_steps=0) == 1.0


def test_cosine_follows_the_binding_budget():
    trainer = Trainer(NICE(couplings=1, hidden=4, depth=1), steps=1000, max_seconds=10.0)
    trainer.step, trainer.seconds = 100, 5.0  # half the time budget, a tenth of the steps
    assert trainer.current_lr() == pytest.approx(1e-3 * 0.5)
    trainer.seconds = 10.0
    assert trainer.done


def test_fit_runs_the_steps_and_records_history():
    torch.manual_seed(0)
    model = NICE(couplings=2, hidden=8, depth=1)
    history, calls = History(), []
    trainer = Trainer(model, steps=7, progress=False, log_every=0)
    trainer.fit(lambda: (torch.randn(16, 2),), history, hooks=[(3, lambda t: calls.append(t.step))])
    assert trainer.step == 7 and calls == [3, 6]
    assert [int(r["step"]) for r in history.rows] == list(range(1, 8))
    assert history.rows[0]["nfe_forward"] == ""  # NICE has no ODE
    assert float(history.rows[-1]["lr"]) < 1e-3  # cosine decays


def test_diverging_loss_fails_loudly():
    model = NICE(couplings=1, hidden=4, depth=1)
    trainer = Trainer(model, steps=3, progress=False)
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        trainer.fit(lambda: (torch.randn(4, 2),), History(), loss_fn=lambda x: x.sum() * math.nan)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"steps": 5, "lr": -1.0}, "train.lr must be > 0, got -1.0"),
        ({"steps": 5, "max_seconds": 0}, "train.max_seconds must be > 0 or null, got 0"),
        ({"steps": 5, "warmup_steps": -1}, "train.warmup_steps must be an int >= 0, got -1"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Trainer(NICE(couplings=1, hidden=4, depth=1), **kwargs)
