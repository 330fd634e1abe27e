"""genlab's configs as Hydra composes them: the shipped group options, composed configs, and
the one check Hydra leaves to the app (keys added with ``+``).

The shipped models and toys are the options of the ``model`` and ``data`` config groups
(``conf/model/*.yaml``, ``conf/data/*.yaml``, installed as the package ``genlab.conf``): every
list of them in the lab (tests, benchmarks, ``--help``) is read from here, never kept by hand.
A config group on Hydra's search path (``hydra.searchpath=[file:///my/conf]``) adds options
the same way.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genlab.checks import check_choice
from genlab.errors import ConfigError

__all__ = [
    "CONFIG_MODULE",
    "hydra_context",
    "compose_config",
    "options",
    "model_options",
    "data_options",
    "get_toy",
    "check_additions",
    "key_owners",
]

CONFIG_MODULE = "genlab.conf"
#: genlab's own sections, whose keys a ``+key=value`` override may not invent.
SECTIONS = ("", "train", "eval", "plots")


@contextlib.contextmanager
def hydra_context() -> Iterator[GlobalHydra]:
    """Hydra's global state for the compose API: the running app's, when there is one (inside
    ``genlab``), else a fresh one on ``genlab.conf`` for the duration of the block."""
    hydra = GlobalHydra.instance()
    if hydra.is_initialized():
        yield hydra
        return
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        yield GlobalHydra.instance()


def compose_config(overrides: Sequence[str] = (), hydra: bool = False) -> DictConfig:
    """``conf/config.yaml`` composed with ``overrides`` (the command line's own strings), as
    the ``genlab`` command composes it; ``hydra``: with the ``hydra`` node (its
    ``runtime.choices`` and ``overrides``)."""
    with hydra_context():
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def options(group: str) -> list[str]:
    """The options of a config group (``model``, ``data``, ``logger``, ...), sorted."""
    with hydra_context() as hydra:
        return sorted(hydra.config_loader().get_group_options(group))


def model_options() -> list[str]:
    """The models genlab can train: the options of the ``model`` group."""
    return options("model")


def data_options() -> list[str]:
    """The toys genlab can train on: the options of the ``data`` group."""
    return options("data")


def get_toy(name: str):
    """A new instance of the toy data set called ``name``, built from its config
    (``conf/data/<name>.yaml``) as a run builds it.

    Raises:
        ValueError: ``unknown data set <name>; choose one of: ...`` for any other name.
    """
    check_choice("data set", name, data_options())
    return instantiate(compose_config([f"data={name}"]).data)


def check_additions(cfg: DictConfig, overrides: Sequence[str], groups: Sequence[str]) -> None:
    """Refuse a ``+key=value`` override that adds a key genlab does not know.

    Hydra's struct mode refuses a mistyped ``key=value``, but ``+`` is Hydra's way to add a
    key on purpose, so a typo such as ``+train.step=300`` would otherwise be silently ignored.
    An added key at the top level or under ``train``, ``eval`` or ``plots`` (genlab's own
    sections) is refused, naming the nearest known key; an added config group (``+story=...``,
    one of ``groups``) and keys under ``model``, ``data`` or ``logger`` (whose schema is their
    class's signature, which checks them) pass.

    Arguments:
        cfg: the composed config.
        overrides: the task overrides, as given (``hydra.overrides.task``).
        groups: the config groups chosen (``hydra.runtime.choices``).

    Raises:
        ConfigError: ``unknown key train.step; did you mean train.steps?``.
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    added = [o for o in parsed if o.is_add() or o.is_force_add()]
    names = {o.key_or_group for o in added}
    for override in added:
        key = override.key_or_group
        section, _, leaf = key.rpartition(".")
        if section not in SECTIONS or key in groups:
            continue
        node = OmegaConf.select(cfg, section) if section else cfg
        prefix = f"{section}." if section else ""
        known = sorted(k for k in node if f"{prefix}{k}" not in names)
        near = difflib.get_close_matches(leaf, known, n=1)
        hint = f"did you mean {prefix}{near[0]}?" if near else f"known: {', '.join(known)}"
        raise ConfigError(f"unknown key {key}; {hint}")


def key_owners(key: str) -> list[str]:
    """The models whose config has ``model.<key>`` (``sampler.method``: the ODE models)."""
    missing = object()
    owners = []
    for name in model_options():
        cfg = compose_config([f"model={name}"])
        if OmegaConf.select(cfg.model, key, default=missing) is not missing:
            owners.append(name)
    return owners
