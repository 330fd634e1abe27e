"""The composition root: instantiate data and model, fit, evaluate, plot, save.

``train(cfg)`` is a plain function (tests call it); ``main`` is the Hydra app behind the
``genlab`` command. This is the only module that knows configs, files, models and plots at once.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genlab import metrics, plots
from genlab.models.base import Model
from genlab.models.nice import NICE, NICE_FLOOR
from genlab.runs import CHECKPOINT, load_checkpoint, save_checkpoint
from genlab.trainer import History, Trainer

__all__ = ["train", "main", "resolve_device"]

log = logging.getLogger("genlab")

SNAPSHOT_TIMES = (0.0, 0.25, 0.5, 0.75, 1.0)
TRAJECTORY_POINTS = 300
QUALITY_STEPS = (1, 2, 4, 10, 100)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available; use device=auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds the global numpy stream users may rely on)
    torch.manual_seed(seed)


def _check_config(cfg: DictConfig) -> None:
    bs = cfg.train.batch_size
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ValueError(f"train.batch_size must be an int >= 1, got {bs!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be an int, got {cfg.seed!r}")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise ValueError(f"threads must be an int >= 1 or null, got {cfg.threads!r}")
    for key in ("plot_every", "checkpoint_every"):
        v = cfg.train[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"train.{key} must be an int >= 0, got {v!r}")


def _make_trainer(cfg: DictConfig, model: Model, round_: int) -> Trainer:
    t = cfg.train
    steps = t.steps if round_ == 0 else model.reflow_steps
    return Trainer(
        model,
        steps=steps,
        lr=t.lr,
        schedule=t.schedule,
        warmup_steps=t.warmup_steps,
        grad_clip=t.grad_clip,
        max_seconds=t.max_seconds,
        log_every=t.log_every,
        progress=t.progress,
        round_=round_,
        desc=f"{model.name} reflow {round_}" if round_ else model.name,
    )


def _round_report(model, toy, cfg, gen, x0, x1) -> dict:
    """Straightness on the round's pairs and W2 after k Euler steps (rectified flow)."""
    n = cfg.eval.n_w2
    out = {"straightness": model.straightness(x0[:n], x1[:n])}
    data = toy.sample(n, gen).to(model.device)
    with torch.no_grad():
        for k in QUALITY_STEPS:
            xs = model.sample(n, gen, method="euler", steps=k)
            out[f"w2_euler{k}"] = metrics.wasserstein2(xs, data)
    return out


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.data``, evaluate it and write every output to ``run_dir``.

    Arguments:
        cfg: the composed config (``conf/config.yaml`` and its groups).
        run_dir: where outputs go; defaults to Hydra's ``runtime.output_dir``.

    Returns:
        The metrics written to ``metrics.json``.
    """
    _check_config(cfg)
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    toy = instantiate(cfg.data)
    model: Model = instantiate(cfg.model).to(device)
    rounds = 1 + getattr(model, "reflow", 0)
    trainers = [_make_trainer(cfg, model, r) for r in range(rounds)]  # validates before writing
    data_gen = torch.Generator(device).manual_seed(cfg.seed)
    history = History()
    config = OmegaConf.to_container(cfg, resolve=True)
    state: dict = {"round": 0, "pairs": None, "rounds": []}
    run_dir.mkdir(parents=True, exist_ok=True)

    if cfg.train.resume and (run_dir / CHECKPOINT).exists():
        ckpt = load_checkpoint(run_dir, map_location=device)
        model.load_state_dict(ckpt["model"])
        trainers[ckpt["round"]].load_state_dict(ckpt["trainer"])
        for r in range(ckpt["round"]):
            trainers[r].step = ckpt["rounds"][r]["steps"]
            trainers[r].seconds = ckpt["rounds"][r]["seconds"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        data_gen.set_state(ckpt["rng"]["data"].to(data_gen.device))
        state = {k: ckpt[k] for k in ("round", "pairs", "rounds")}
        history = History.read(run_dir / "history.csv")
        history.truncate(ckpt["round"], ckpt["trainer"]["step"])
        log.info(
            "resumed %s at round %d step %d", run_dir, state["round"], trainers[state["round"]].step
        )
    elif cfg.train.resume:
        log.info("train.resume=true but %s has no %s: starting fresh", run_dir, CHECKPOINT)

    def save(trainer: Trainer) -> None:
        save_checkpoint(
            run_dir / CHECKPOINT,
            {
                "model": model.state_dict(),
                "config": config,
                "round": trainer.round,
                "trainer": trainer.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "data": data_gen.get_state()},
                **{k: state[k] for k in ("pairs", "rounds")},
            },
        )
        history.write(run_dir / "history.csv")

    title = f"{model.name} on {toy.name}"
    bound = toy.bound
    eval_gen = torch.Generator(device).manual_seed(cfg.eval.seed)
    data_view = toy.sample(5000, eval_gen).numpy(force=True)

    def plot_samples(trainer: Trainer) -> None:
        with torch.no_grad():
            xs = model.sample(5000, torch.Generator(device).manual_seed(cfg.eval.seed))
        step_title = f"{title}, round {trainer.round} step {trainer.step}"
        plots.plot_samples(
            data_view, xs.numpy(force=True), bound, step_title, run_dir / "samples.png"
        )
        model.train()

    batch = cfg.train.batch_size
    for r in range(state["round"], rounds):
        trainer = trainers[r]
        state["round"] = r
        if r == 0:
            next_batch, loss_fn = (lambda: (toy.sample(batch, data_gen).to(device),)), None
        else:
            if state["pairs"] is None or trainer.step == 0:
                start = time.perf_counter()
                noise_gen = torch.Generator(device).manual_seed(cfg.seed + 1000 * r)
                state["pairs"] = torch.cat(model.make_pairs(model.reflow_pairs, noise_gen), dim=1)
                trainer.seconds += time.perf_counter() - start  # part of the round's cost
            pairs = state["pairs"]

            def next_batch(pairs=pairs):
                idx = torch.randint(len(pairs), (batch,), generator=data_gen, device=device)
                return pairs[idx].chunk(2, dim=1)

            loss_fn = model.pair_loss
        hooks = [(cfg.train.checkpoint_every, save), (cfg.train.plot_every, plot_samples)]
        if not trainer.done:
            trainer.fit(next_batch, history, loss_fn, hooks)
        if rounds > 1 and len(state["rounds"]) <= r:
            gen = torch.Generator(device).manual_seed(cfg.eval.seed)
            if r == 0:
                x0, x1 = model.make_pairs(cfg.eval.n_w2, gen)
            else:
                x0, x1 = state["pairs"].chunk(2, dim=1)
            report = _round_report(model, toy, cfg, gen, x0, x1)
            log.info("round %d: %s", r, ", ".join(f"{k} {v:.4f}" for k, v in report.items()))
            paths = model.trajectories(TRAJECTORY_POINTS, gen).cpu()
            done = {"steps": trainer.step, "seconds": trainer.seconds}
            state["rounds"].append({**done, "report": report, "paths": paths})
        save(trainer)

    steps = sum(t.step for t in trainers)
    train_seconds = sum(t.seconds for t in trainers)
    out = {
        "model": model.name,
        "data": toy.name,
        "seed": cfg.seed,
        "device": str(device),
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": steps,
        "train_seconds": train_seconds,
        "steps_per_second": steps / max(train_seconds, 1e-9),
    }
    log.info("evaluating %s", title)
    out.update(
        metrics.evaluate(
            model,
            toy,
            seed=cfg.eval.seed,
            n_test=cfg.eval.n_test,
            n_w2=cfg.eval.n_w2,
            n_timing=cfg.eval.n_timing,
        )
    )
    if isinstance(model, NICE):
        out["nice_floor"] = NICE_FLOOR[toy.name]
    nfe_rows = [r for r in history.rows if r["nfe_forward"] != ""]
    if nfe_rows:
        total = [int(r["nfe_forward"]) + int(r["nfe_backward"]) for r in nfe_rows]
        k = min(10, len(total))
        out["train_nfe_first"] = sum(total[:k]) / k
        out["train_nfe_last"] = sum(total[-k:]) / k
    for r, rnd in enumerate(state["rounds"]):
        out.update({f"round{r}_{k}": v for k, v in rnd["report"].items()})

    # Figures. The density grid is saved too, so the sweep report can draw its gallery.
    final_title = f"{title}, step {steps}"
    with torch.no_grad():
        xs = model.sample(5000, torch.Generator(device).manual_seed(cfg.eval.seed))
    plots.plot_samples(data_view, xs.numpy(force=True), bound, final_title, run_dir / "samples.png")
    dtype = next(model.parameters()).dtype
    log_model = plots.grid_log_density(model.log_prob, bound, cfg.eval.grid, device, dtype)
    log_truth = plots.grid_log_density(toy.log_prob, bound, cfg.eval.grid, "cpu", torch.float64)
    plots.plot_density(log_truth, log_model, bound, final_title, run_dir / "density.png")
    np.savez_compressed(
        run_dir / "samples.npz",
        samples=xs.numpy(force=True)[:2000],
        log_density=log_model,
        bound=bound,
    )
    if hasattr(model, "trajectories"):
        panels = [(f"round {r}", rnd["paths"].numpy()) for r, rnd in enumerate(state["rounds"])]
        if not panels:
            gen = torch.Generator(device).manual_seed(cfg.eval.seed)
            paths = model.trajectories(TRAJECTORY_POINTS, gen).numpy(force=True)
            panels = [("noise (t=0) to samples (t=1)", paths)]
        plots.plot_trajectories(panels, data_view, bound, final_title, run_dir / "trajectories.png")
        snaps = {
            t: plots.grid_log_density(
                lambda x, t=t: model.log_prob(x, t=t), bound, cfg.eval.grid // 2, device, dtype
            )
            for t in SNAPSHOT_TIMES
        }
        plots.plot_density_snapshots(snaps, bound, f"{final_title}: p_t", run_dir / "density_t.png")
    if state["rounds"]:
        curves = {
            f"round {r}": {k: rnd["report"][f"w2_euler{k}"] for k in QUALITY_STEPS}
            for r, rnd in enumerate(state["rounds"])
        }
        plots.plot_quality_vs_steps(
            curves, out["w2_floor"], f"{title}: W2 vs steps", run_dir / "quality_vs_steps.png"
        )
    out["peak_memory_mb"] = metrics.peak_memory_mb(device)
    (run_dir / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
    log.info(
        "%s: nll %.4f  kl %.4f +- %.4f  w2 %.3f (floor %.3f)  %.1f s  -> %s",
        title,
        out["nll"],
        out["kl"],
        out["kl_se"],
        out["w2"],
        out["w2_floor"],
        train_seconds,
        run_dir,
    )
    return out


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """The ``genlab`` command: train one model (or, with ``-m``, a sweep)."""
    return train(cfg)["kl"]
