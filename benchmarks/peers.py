"""Same-run duels against the libraries people would use instead, scored by genlab's yardstick.

Each duel trains genlab's model and a peer's on the same toy, from the same data stream, for
the same wall-clock budget and thread count, one after the other in this process, then scores
both with genlab's exact yardstick: KL to the exact density on 20,000 fresh points (with its
standard error) and W2 against 2,000 fresh points beside the data's own floor. The ratios
genlab / peer are the figures that count: absolute seconds differ several-fold between
machines of one kind.

- rectified flow vs torchcfm (``ConditionalFlowMatcher(sigma=0)``, its own ``models.MLP``) and
  vs flow_matching (``AffineProbPath(CondOTScheduler())`` with a 3x128 SiLU MLP). Neither peer
  has a likelihood: their trained velocity nets are integrated by genlab's ODE core with the
  exact divergence (dopri5 1e-6, as genlab's own), and the table says so. Sampling time is each
  library's own ODE sampler (torchdyn dopri5 for torchcfm, ``ODESolver`` dopri5 for
  flow_matching) against genlab's default sampler.
- NICE vs zuko (``zuko.flows.NICE`` with ``AdditiveTransform``) and normflows (additive
  ``AffineCouplingBlock(scale=False)``), 8 couplings of 3x128: KL above the NICE floor.
- CNF vs zuko's CNF (FFJORD transform, exact trace).
- The flows after NICE, each against a stock peer at its defaults, on all eight toys: NSF vs
  ``zuko.flows.NSF`` (3 autoregressive rational-quadratic spline transforms, 8 bins, 64x64),
  RealNVP vs ``zuko.flows.RealNVP`` (3 affine couplings, 64x64), and on four toys Glow vs
  normflows' Glow blocks (ActNorm, ``LULinearPermute``, an ``AffineCouplingBlock`` with
  Glow's sigmoid scale; 8 blocks of 64x64, genlab's size).

Install the peers with ``make bench`` (the ``bench`` extra, with torch held at the installed
build), then::

    python benchmarks/peers.py                       # every duel, 60 s a side, 1 thread
    python benchmarks/peers.py --seconds 20 --duels rf-torchcfm --data moons
    python benchmarks/peers.py --duels nice-zuko --data 2spirals --seeds 0 1 2   # + medians

Each side of a seed's duel starts from that seed (weights and data stream), so a row per seed
shows both libraries' spread, and with several seeds a last row holds each column's median.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from common import BY_TIME, train_run
from torch import Tensor, nn

from genlab import metrics
from genlab.configs import data_options, get_toy
from genlab.models.base import Model, StandardNormal
from genlab.ode import NFECounter, Solver, transport_logdet

DATA = ("8gaussians", "moons", "checkerboard", "2spirals")
ALL = tuple(data_options())
CNF_DATA = ("8gaussians", "moons")
BATCH, LR = 256, 1e-3
LIKELIHOOD = Solver("dopri5", atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- the stream
def stream(data: str, seed: int = 0) -> Iterator[Tensor]:
    """The shared data stream: fresh batches of 256, the same for both sides of a duel."""
    toy, gen = get_toy(data), torch.Generator().manual_seed(seed)
    while True:
        yield toy.sample(BATCH, gen)


def fit_for(
    seconds: float, loss: Callable[[Tensor], Tensor], params, data: str, seed: int = 0
) -> int:
    """Adam at 1e-3 on the shared stream until ``seconds`` of wall time; returns the steps."""
    opt, batches, steps = torch.optim.Adam(list(params), lr=LR), stream(data, seed), 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        value = loss(next(batches))
        opt.zero_grad()
        value.backward()
        opt.step()
        steps += 1
    return steps


# ----------------------------------------------------------------------------- scoring
class FieldModel(Model):
    """A peer's trained velocity net seen through genlab's interface: its density by genlab's
    ODE core with the exact divergence, its samples by the peer's own sampler."""

    def __init__(self, field: Callable[[Tensor, Tensor], Tensor], sampler) -> None:
        super().__init__()
        self.field, self.sampler = field, sampler
        self.prior, self.counter = StandardNormal(2), NFECounter()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def log_prob(self, x: Tensor) -> Tensor:
        sol = transport_logdet(self.field, x, 1.0, 0.0, LIKELIHOOD, counter=self.counter)
        return self.prior.log_prob(sol.x) + sol.delta_logp

    def sample(self, n: int, generator=None) -> Tensor:
        return self.sampler(torch.randn(n, 2, generator=generator))


class DensityModel(Model):
    """A peer's normalising flow with its own ``log_prob`` and ``sample``."""

    def __init__(self, log_prob, sample) -> None:
        super().__init__()
        self._log_prob, self._sample = log_prob, sample
        self.anchor = nn.Parameter(torch.zeros(()))

    def log_prob(self, x: Tensor) -> Tensor:
        return self._log_prob(x)

    def sample(self, n: int, generator=None) -> Tensor:
        if generator is not None:
            torch.manual_seed(int(torch.randint(2**31, (), generator=generator)))
        return self._sample(n)


def score(model: Model, data: str) -> dict:
    """genlab's yardstick: KL +- SE on 20,000 points, W2 / floor on 2,000, 10k-sample time."""
    with torch.no_grad():
        out = metrics.evaluate(model.eval(), get_toy(data), seed=12345)
    return out


# ----------------------------------------------------------------------------- genlab's side
def genlab_side(model: str, data: str, seconds: float, extra: list[str], seed: int = 0) -> dict:
    """genlab trained through its own composition root under the same time budget."""
    budget = [*BY_TIME, f"train.max_seconds={seconds}"]
    # the figures do not enter the scores: draw them small and fast
    return train_run(model, data, seed, [*budget, "eval.grid=60", *extra])


# ----------------------------------------------------------------------------- peers
def torchcfm_side(data: str, seconds: float, seed: int = 0) -> tuple[dict, int]:
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
    from torchcfm.models.models import MLP
    from torchdyn.core import NeuralODE

    torch.manual_seed(seed)
    net = MLP(dim=2, time_varying=True, w=128)
    cfm = ConditionalFlowMatcher(sigma=0.0)

    def loss(x1: Tensor) -> Tensor:
        x0 = torch.randn_like(x1)
        t, xt, ut = cfm.sample_location_and_conditional_flow(x0, x1)
        return (net(torch.cat([xt, t[:, None]], dim=-1)) - ut).square().mean()

    steps = fit_for(seconds, loss, net.parameters(), data, seed)
    net.eval().requires_grad_(False)

    def field(t: Tensor, x: Tensor) -> Tensor:
        return net(torch.cat([x, t.expand(len(x), 1).to(x)], dim=-1))

    node = NeuralODE(_TorchdynField(net), solver="dopri5", atol=1e-4, rtol=1e-4)

    def sample(z: Tensor) -> Tensor:
        return node.trajectory(z, t_span=torch.linspace(0, 1, 2))[-1]

    return score(FieldModel(field, sample), data), steps


class _TorchdynField(nn.Module):
    """torchcfm's examples wrap the net this way for torchdyn: ``v(t, x) = net([x, t])``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t, x, *args, **kwargs):
        return self.net(torch.cat([x, t.expand(len(x), 1)], dim=-1))


def flow_matching_side(data: str, seconds: float, seed: int = 0) -> tuple[dict, int]:
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    torch.manual_seed(seed)
    layers = [nn.Linear(3, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU()]
    net = nn.Sequential(*layers, nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))
    path = AffineProbPath(scheduler=CondOTScheduler())

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return net(torch.cat([x, t.reshape(-1, 1).expand(len(x), 1).to(x)], dim=-1))

    def loss(x1: Tensor) -> Tensor:
        x0 = torch.randn_like(x1)
        t = torch.rand(len(x1))
        p = path.sample(t=t, x_0=x0, x_1=x1)
        return (velocity(p.x_t, p.t) - p.dx_t).square().mean()

    steps = fit_for(seconds, loss, net.parameters(), data, seed)
    net.eval().requires_grad_(False)

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return velocity(x, t)

    solver = ODESolver(velocity_model=Wrapped(net))

    def sample(z: Tensor) -> Tensor:
        return solver.sample(x_init=z, step_size=None, method="dopri5", atol=1e-4, rtol=1e-4)

    return score(FieldModel(lambda t, x: velocity(x, t), sample), data), steps


def zuko_nice_side(data: str, seconds: float, seed: int = 0) -> tuple[dict, int]:
    import zuko

    torch.manual_seed(seed)
    flow = zuko.flows.NICE(
        2,
        transforms=8,
        hidden_features=(128,) * 3,
        univariate=zuko.transforms.AdditiveTransform,  # else zuko's NICE is affine
        shapes=[()],  # the shift's shape
    )
    steps = fit_for(seconds, lambda x: -flow().log_prob(x).mean(), flow.parameters(), data, seed)
    flow.requires_grad_(False)
    model = DensityModel(lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))
    return score(model, data), steps


def normflows_nice_side(data: str, seconds: float, seed: int = 0) -> tuple[dict, int]:
    import normflows as nf

    torch.manual_seed(seed)
    flows = []
    for _ in range(8):
        mlp = nf.nets.MLP([1, 128, 128, 128, 1], init_zeros=True)  # shift of the other half
        flows.append(nf.flows.AffineCouplingBlock(mlp, scale=False))
        flows.append(nf.flows.Permute(2, mode="swap"))
    model_nf = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)
    steps = fit_for(seconds, lambda x: model_nf.forward_kld(x), model_nf.parameters(), data, seed)
    model_nf.requires_grad_(False)
    model = DensityModel(model_nf.log_prob, lambda n: model_nf.sample(n)[0])
    return score(model, data), steps


def zuko_cnf_side(data: str, seconds: float, seed: int = 0) -> tuple[dict, int]:
    import zuko

    torch.manual_seed(seed)
    flow = zuko.flows.CNF(2, hidden_features=(64,) * 3, exact=True, atol=1e-5, rtol=1e-5)
    steps = fit_for(seconds, lambda x: -flow().log_prob(x).mean(), flow.parameters(), data, seed)
    flow.requires_grad_(False)
    model = DensityModel(lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))
    return score(model, data), steps


def zuko_flow_side(name: str):
    """A zuko flow at its defaults (``zuko.flows.<name>(2)``), trained by maximum likelihood."""

    def side(data: str, seconds: float, seed: int = 0) -> tuple[dict, int]:
        import zuko

        torch.manual_seed(seed)
        flow = getattr(zuko.flows, name)(2)
        loss = lambda x: -flow().log_prob(x).mean()  # noqa: E731
        steps = fit_for(seconds, loss, flow.parameters(), data, seed)
        flow.requires_grad_(False)
        model = DensityModel(lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))
        return score(model, data), steps

    return side


def normflows_glow_side(data: str, seconds: float, seed: int = 0) -> tuple[dict, int]:
    import normflows as nf

    torch.manual_seed(seed)
    flows = []
    for _ in range(8):  # base-to-data order: the data-to-latent order is ActNorm, W, coupling
        mlp = nf.nets.MLP([1, 64, 64, 2], init_zeros=True)
        flows += [
            nf.flows.AffineCouplingBlock(mlp, scale_map="sigmoid"),
            nf.flows.LULinearPermute(2),
            nf.flows.ActNorm((2,)),
        ]
    model_nf = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)
    steps = fit_for(seconds, lambda x: model_nf.forward_kld(x), model_nf.parameters(), data, seed)
    model_nf.requires_grad_(False)
    model = DensityModel(model_nf.log_prob, lambda n: model_nf.sample(n)[0])
    return score(model, data), steps


# genlab model, its overrides, the peer, its label, which data sets, how KL is read
DUELS = {
    "rf-torchcfm": ("rectified_flow", [], torchcfm_side, "torchcfm (sigma=0)*", DATA),
    "rf-flow_matching": ("rectified_flow", [], flow_matching_side, "flow_matching*", DATA),
    "nice-zuko": ("nice", [], zuko_nice_side, "zuko NICE (additive)", DATA),
    "nice-normflows": ("nice", [], normflows_nice_side, "normflows NICE (additive)", DATA),
    "cnf-zuko": ("cnf", [], zuko_cnf_side, "zuko CNF", CNF_DATA),
    "nsf-zuko": ("nsf", [], zuko_flow_side("NSF"), "zuko NSF", ALL),
    "realnvp-zuko": ("realnvp", [], zuko_flow_side("RealNVP"), "zuko RealNVP", ALL),
    "glow-normflows": ("glow", [], normflows_glow_side, "normflows Glow blocks", DATA),
}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 and math.isfinite(a / b) else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget a side")
    parser.add_argument("--duels", nargs="+", default=list(DUELS), choices=DUELS)
    parser.add_argument("--data", nargs="+", default=None, help="restrict the toys")
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="a row per seed, then their medians"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for genlab's side")
    args = parser.parse_args()
    torch.set_num_threads(1)
    head = (
        "duel",
        "data",
        "seed",
        "genlab KL",
        "peer KL",
        "KL ratio",
        "genlab W2",
        "peer W2",
        "W2 floor",
        "genlab 10k s",
        "peer 10k s",
        "steps genlab / peer",
    )
    print(
        f"{args.seconds:g} s of training a side, 1 thread; * = peer without a likelihood, "
        "integrated by genlab's ODE core (exact divergence, dopri5 1e-6)"
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in args.duels:
        model, extra, peer, label, datasets = DUELS[name]
        for data in datasets if args.data is None else [d for d in args.data if d in datasets]:
            rows = []
            for seed in args.seeds:
                ours = genlab_side(model, data, args.seconds, [*extra, *args.overrides], seed)
                theirs, peer_steps = peer(data, args.seconds, seed)
                rows.append((ours, theirs, peer_steps))
                _print_row(f"{model} vs {label}", data, f"seed {seed}", ours, theirs, peer_steps)
            if len(rows) > 1:  # medians over seeds, each column on its own
                med = [
                    {k: statistics.median(r[i][k] for r in rows) for k in SCORED} for i in (0, 1)
                ]
                if "nice_floor" in rows[0][0]:
                    med[0]["nice_floor"] = rows[0][0]["nice_floor"]
                med[0]["steps"] = int(statistics.median(r[0]["steps"] for r in rows))
                steps = int(statistics.median(r[2] for r in rows))
                _print_row(f"{model} vs {label}", data, "**median**", med[0], med[1], steps)


SCORED = ("kl", "kl_se", "w2", "w2_floor", "sample_seconds")


def _print_row(duel: str, data: str, seed: str, ours: dict, theirs: dict, peer_steps: int) -> None:
    floor = ours.get("nice_floor", 0.0)
    kl_ours, kl_theirs = ours["kl"] - floor, theirs["kl"] - floor
    above = " (above floor)" if floor else ""
    print(
        f"| {duel} | {data} | {seed} | {ours['kl']:.3f} ± {ours['kl_se']:.3f}"
        f" | {theirs['kl']:.3f} ± {theirs['kl_se']:.3f} | {_ratio(kl_ours, kl_theirs)}"
        f"{above} | {ours['w2']:.3f} | {theirs['w2']:.3f} | {ours['w2_floor']:.3f}"
        f" | {ours['sample_seconds']:.2f} | {theirs['sample_seconds']:.2f}"
        f" | {ours['steps']} / {peer_steps} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
