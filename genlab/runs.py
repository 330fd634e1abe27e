"""Run directories and checkpoints.

A checkpoint ``model.pt`` describes itself: the model's ``state_dict``, the resolved config,
the training round and step, the trainer's state and the random states, so that a run can
resume and ``load_run`` can rebuild the model from the run dir alone. Everything in it is a
tensor or a plain container, so it loads with ``torch.load(..., weights_only=True)``.

A checkpoint is data, never code: ``weights_only`` keeps the unpickler from running code, and
before ``load_run`` or ``load_toy`` builds anything from the config it read, every ``_target_``
in that config must name one of genlab's own classes (a model or other ``torch.nn.Module``, a
:class:`genlab.data.Toy`, or a frozen dataclass such as :class:`genlab.ode.Solver`), or lie in a
module the caller trusts.
Every way a checkpoint can be wrong ends in a one-line :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import pickle
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer per dir is then the user's care
    fcntl = None

from genlab.checks import check_int
from genlab.data import Toy
from genlab.errors import CheckpointError, RunDirError, RunInUse
from genlab.files import atomic, remove_temps
from genlab.models.base import Model

__all__ = [
    "CHECKPOINT",
    "RUN_FILES",
    "ERROR_FILE",
    "check_run_dir",
    "RunLock",
    "RUN_KEYS",
    "RESUME_KEYS",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "check_config",
    "resume_checkpoint",
    "check_resume",
    "RESUMABLE_CHANGES",
    "load_run",
    "load_toy",
]

log = logging.getLogger("genlab")

CHECKPOINT = "model.pt"
RUN_FILES = (CHECKPOINT, "metrics.json")  # a dir holding either holds a run
ERROR_FILE = "error.json"  # why a sweep job failed (written by the genlab command)
RUN_KEYS = ("model", "config")  # what load_run needs
RESUME_KEYS = ("model", "config", "stage", "trainer", "rng", "stage_data", "records")


def _buildable(cls: type) -> bool:
    """What a checkpoint's config may build without trust, among genlab's classes: modules
    (models, nets), toys, and frozen dataclasses (the value objects of a config: solvers,
    samplers, schedules), whose construction only stores their fields."""
    frozen = dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    return issubclass(cls, (nn.Module, Toy)) or frozen


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_PLAIN = (str, int, float, bool, type(None))
# Keys Hydra's instantiate reads besides _target_. None runs code by itself: _args_ holds
# positional arguments (walked like any list), _partial_ returns functools.partial of the
# checked class, _convert_ and _recursive_ change how arguments are passed. The config is
# walked in full whatever _recursive_ says, so a nested _target_ is always checked.
_HYDRA_FLAGS = {"_partial_": bool, "_recursive_": bool, "_convert_": str, "_args_": (list, tuple)}
_RETRAIN = "restore it, or delete it and train again"


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _load_reason(err: Exception) -> str:
    """torch's reason for refusing a file, without its advice to load it unsafely: for a
    weights-only refusal, the unpickler's own words; else the message on one line."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    return _one_line(text)


def _refused_object(err: Exception) -> str:
    """Why a weights-only load refused a file, naming the object in full; torch's own advice
    (to load it with ``weights_only=False``, which runs whatever the file names) is left out."""
    found = _GLOBAL.search(str(err))
    what = f"the Python object {found.group(1)}" if found else "a Python object"
    return (
        f"refusing to load it: it holds {what}, which a genlab checkpoint never holds and a "
        "weights-only load does not build (building it could run any code); a checkpoint "
        "holds only tensors and plain values. Do not load this file; train again"
    )


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a crash never leaves half a checkpoint; a
    failed write leaves the previous one and no temporary file; see :mod:`genlab.files`)."""
    with atomic(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    run_dir: str | Path,
    map_location: str | torch.device = "cpu",
    keys: Iterable[str] = RUN_KEYS,
) -> dict:
    """Read ``model.pt`` from ``run_dir`` with ``weights_only=True`` and check its shape.

    Arguments:
        run_dir: the run dir.
        map_location: where the tensors go.
        keys: the entries the caller needs (:data:`RUN_KEYS`; :data:`RESUME_KEYS` to resume).

    Returns:
        The checkpoint: a dict holding ``keys``, whose ``config["model"]`` is a ``_target_``
        dict. Nothing in it has been built.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``model.pt``.
        CheckpointError: the file is empty, truncated, not a torch file, or not a genlab
            checkpoint; the message names the file and what is wrong.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}: is {run_dir} a genlab run dir?")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty, not a genlab checkpoint; {_RETRAIN}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises OSError, EOFError, RuntimeError, UnpicklingError...
        if isinstance(err, pickle.UnpicklingError) and _GLOBAL.search(str(err)):
            raise CheckpointError(f"{path}: {_refused_object(err)}") from None
        raise CheckpointError(
            f"{path}: cannot read it as a torch checkpoint, it is truncated or another kind of "
            f"file ({type(err).__name__}: {_load_reason(err)}); {_RETRAIN}"
        ) from None
    missing = [k for k in keys if k not in ckpt] if isinstance(ckpt, Mapping) else list(keys)
    if missing:
        raise CheckpointError(
            f"{path}: not a genlab checkpoint (it has no {', '.join(map(repr, missing))}); "
            f"{_RETRAIN}"
        )
    _section(ckpt, "model", path)
    return ckpt


def _section(ckpt: Mapping, name: str, path: Path) -> dict:
    """``ckpt["config"][name]``, checked to be a ``_target_`` dict."""
    config = ckpt["config"]
    section = config.get(name) if isinstance(config, Mapping) else None
    if not isinstance(section, Mapping) or not isinstance(section.get("_target_"), str):
        raise CheckpointError(
            f"{path}: not a genlab checkpoint (its config has no {name} with a _target_); "
            f"{_RETRAIN}"
        )
    return dict(section)


def _within(name: str, prefix: str) -> bool:
    """Whether the dotted ``name`` is ``prefix`` or lies below it (``a.b`` is within ``a``)."""
    return name == prefix or name.startswith(prefix + ".")


def _locate(name: str) -> object:
    """The object a dotted name points to, importing modules along it as Hydra does."""
    parts = name.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            if not isinstance(obj, ModuleType):
                raise
            obj = importlib.import_module(".".join(parts[:i]))
    return obj


def _check_target(target: object, where: str, path: Path, trusted: tuple[str, ...]) -> None:
    """Refuse ``target`` unless it is a genlab class that may be built, or lies in a trusted
    module. Imports only modules below ``genlab`` or a trusted name."""

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: refusing to build {target!r} ({where}): {why}")

    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        raise refuse("a _target_ is the dotted name of a class")
    own = "a checkpoint builds only genlab's own classes (models, toys, config values)"
    is_trusted = any(_within(target, t) for t in trusted)
    if not is_trusted and not _within(target, "genlab"):
        top = target.split(".")[0]
        raise refuse(f'{own}; pass trusted=["{top}"] to load_run to allow a module you trust')
    try:
        obj = _locate(target)
    except Exception as err:  # the import of a genlab or trusted module, or a missing name
        raise refuse(f"cannot find it ({_one_line(err)})") from None
    module = getattr(obj, "__module__", None) or ""
    if any(_within(module, t) for t in trusted):
        return
    if isinstance(obj, type) and _within(module, "genlab") and _buildable(obj):
        return
    if is_trusted:
        raise refuse(f"it is defined in {module or 'no module'!r}, outside the trusted modules")
    raise refuse(own)


def check_config(
    config: object, path: str | Path, trusted: Iterable[str] = (), where: str = "config"
) -> None:
    """Refuse a config read from a file unless building it runs only code the caller trusts.

    Walks every nesting level of ``config`` (dicts and lists) before anything is built. Every
    ``_target_`` must name a class defined in a ``genlab`` module that derives from
    ``torch.nn.Module`` or :class:`genlab.data.Toy` or is a frozen dataclass (a config value:
    solver, sampler, schedule), or lie in a module named in ``trusted``. Only modules below
    ``genlab`` and the trusted names are imported. Values must be plain (strings, numbers,
    booleans, None) and hold no ``${...}`` interpolation, which ``instantiate`` would resolve
    (``oc.env`` reads the environment); a config is stored resolved.

    Arguments:
        config: the config, as plain containers.
        path: the file it came from, for the messages.
        trusted: module names (or prefixes: ``"mypkg"`` allows ``mypkg.models.X``) whose
            callables may be built.
        where: the config's key path, for the messages.

    Raises:
        CheckpointError: naming the file, the key and the refused value.
    """
    trusted = (trusted,) if isinstance(trusted, str) else tuple(trusted)
    if isinstance(config, Mapping):
        for key, value in config.items():
            at = f"{where}.{key}"
            if key == "_target_":
                _check_target(value, where, Path(path), trusted)
            elif key in _HYDRA_FLAGS and not isinstance(value, _HYDRA_FLAGS[key]):
                raise CheckpointError(f"{path}: {at} is malformed ({value!r}); {_RETRAIN}")
            else:
                check_config(value, path, trusted, at)
    elif isinstance(config, list | tuple):
        for i, value in enumerate(config):
            check_config(value, path, trusted, f"{where}[{i}]")
    elif isinstance(config, str) and "${" in config:
        raise CheckpointError(
            f"{path}: refusing the interpolation {config!r} at {where}: a checkpoint's config "
            "is stored resolved"
        )
    elif not isinstance(config, _PLAIN):
        raise CheckpointError(
            f"{path}: {where} holds a {type(config).__name__}, not a plain config value"
        )


def _build(section: dict, path: Path, trusted: Iterable[str], where: str) -> object:
    """Check ``section`` and instantiate it; any failure is a one-line ``CheckpointError``."""
    check_config(section, path, trusted, where)
    try:
        return instantiate(OmegaConf.create(section))
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot build {section['_target_']!r} from {where} ({_one_line(err)}); "
            f"{_RETRAIN}"
        ) from err


def resume_checkpoint(run_dir: str | Path, model: nn.Module, config: Mapping, stages: int) -> dict:
    """Read a run dir's checkpoint to resume it, and load its weights into ``model``.

    Nothing is built from the file: ``model`` is the one the resumed run's own ``config``
    built, so resuming needs no trust in the file's config.

    Arguments:
        run_dir: the run dir.
        model: the model ``config["model"]`` describes, on its device.
        config: the resumed run's resolved config.
        stages: how many training stages the model has.

    Returns:
        The checkpoint (every key of :data:`RESUME_KEYS`), tensors on the model's device.

    Raises:
        CheckpointError: the file is unreadable or not a genlab checkpoint, or holds another
            model (another ``_target_``, weights of other shapes, a stage the model lacks),
            naming what it holds and what the config asks for.
    """
    device = next(model.parameters()).device
    ckpt = load_checkpoint(run_dir, device, keys=RESUME_KEYS)
    path = Path(run_dir) / CHECKPOINT
    held, wanted = ckpt["config"]["model"], config["model"]
    _check_same_model(path, held, wanted)
    advice = "resume with the model it holds, or choose another hydra.run.dir"
    try:
        model.load_state_dict(ckpt["model"])
    except Exception as err:  # RuntimeError on missing keys or shapes, TypeError on non-dicts
        changed = _differences(held, wanted)
        what = f"settings differ: {changed}" if changed else _one_line(err)
        raise CheckpointError(
            f"{path} holds a {held['_target_']} model whose weights do not fit the one the "
            f"config asks for ({what}): {advice}"
        ) from None
    try:
        check_int("stage", ckpt["stage"], 0, stages - 1)
    except ValueError:
        raise CheckpointError(
            f"{path} stopped in training stage {ckpt['stage']!r}, but the config's model trains "
            f"in {stages} stage(s) (model.reflow?): {advice}"
        ) from None
    return ckpt


# Settings a resumed run may change: how it reports and for how long it trains. Every other
# setting of model, data, seed and train decides what the run trains, so a resume that changes
# one would continue a run it does not describe. A longer train.steps or max_seconds grows a
# run; the schedule then follows the new budget, so the weights differ from either budget's.
RESUMABLE_CHANGES = (
    "train.resume",
    "train.progress",
    "train.log_every",
    "train.plot_every",
    "train.checkpoint_every",
    "train.steps",
    "train.max_seconds",
)
_RUN_DEFINING = ("model", "data", "seed", "train")
_ABSENT = object()  # a key one of two configs lacks


def _check_same_model(path: Path, held: Mapping, wanted: Mapping) -> None:
    if held["_target_"] != wanted["_target_"]:
        raise CheckpointError(
            f"{path} holds a {held['_target_']} model, but the config asks for "
            f"{wanted['_target_']}: resume with the model it holds, or choose another "
            "hydra.run.dir"
        )


def _changes(held: object, wanted: object, where: str) -> Iterable[tuple[str, object, object]]:
    """``(key, value in the file, value in the config)`` for every leaf that differs; a key
    one side lacks has the value ``_ABSENT`` there."""
    if isinstance(held, Mapping) and isinstance(wanted, Mapping):
        for k in sorted({*held, *wanted}, key=str):
            yield from _changes(held.get(k, _ABSENT), wanted.get(k, _ABSENT), f"{where}.{k}")
    elif held != wanted:
        yield where, held, wanted


def _describe(changes: Iterable[tuple[str, object, object]]) -> str:
    return ", ".join(
        f"{key} {'absent' if a is _ABSENT else repr(a)} in the file, "
        f"{'absent' if b is _ABSENT else repr(b)} in the config"
        for key, a, b in changes
    )


def _differences(held: object, wanted: object, where: str = "model") -> str:
    """The keys whose values differ between two configs, as ``key: file -> config`` items."""
    return _describe(_changes(held, wanted, where))


def check_resume(run_dir: str | Path, config: Mapping) -> list[str]:
    """Refuse to resume the run in ``run_dir`` under settings it was not trained with.

    Compares the checkpoint's config with ``config`` over ``model``, ``data``, ``seed`` and
    ``train``, except :data:`RESUMABLE_CHANGES`; ``eval``, ``plots``, ``logger``, ``device``
    and ``threads`` may change freely. A key one side lacks (a setting that the checkpoint's
    genlab did not have, or that this one does not have) is not an error: it is returned, so
    the caller can say that the config's value applies. Reads the file only; writes nothing.

    Arguments:
        run_dir: a run dir holding ``model.pt``.
        config: the resumed run's resolved config.

    Returns:
        Descriptions of the keys one side lacks (empty when the configs agree).

    Raises:
        CheckpointError: the file is broken, or the run was trained with other settings; the
            message names every differing key with both values, and how to go on.
    """
    path = Path(run_dir) / CHECKPOINT
    held = load_checkpoint(run_dir, keys=RESUME_KEYS)["config"]
    _check_same_model(path, held["model"], config["model"])
    changes = [
        c
        for section in _RUN_DEFINING
        for c in _changes(held.get(section, _ABSENT), config.get(section, _ABSENT), section)
        if c[0] not in RESUMABLE_CHANGES
    ]
    absent = [c for c in changes if _ABSENT in (c[1], c[2])]
    differ = [c for c in changes if _ABSENT not in (c[1], c[2])]
    if differ:
        raise CheckpointError(
            f"{path} holds a {held['model']['_target_']} run trained with other settings "
            f"({_describe(differ)}):"
            " resume with the settings it was trained with, or choose another hydra.run.dir"
        )
    return [_describe([c]) for c in absent]


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", trusted: Iterable[str] = ()
) -> Model:
    """Rebuild the trained model of a run dir, in eval mode on ``device``, ready for inference.

    The model's parameters are frozen (``requires_grad=False``), so ``sample`` and ``log_prob``
    build no autograd graph: an adaptive ODE solve would otherwise keep every step's graph
    (gigabytes for ``log_prob`` of 20,000 points). To fine-tune a loaded model, unfreeze and
    switch it to training mode: ``model.requires_grad_(True).train()``.

    A checkpoint's config builds only genlab's own classes: a model of your own (a plug-in
    from a module outside genlab) loads when you name its module as trusted, since building
    it runs that module's code.

    Arguments:
        run_dir: a run dir holding ``model.pt``.
        device: where the model goes.
        trusted: module names (or prefixes: ``"mypkg"`` allows ``mypkg.models.X``) whose
            classes the checkpoint may build, besides genlab's.

    Returns:
        The model, in eval mode, its parameters frozen.

    Raises:
        FileNotFoundError: no ``model.pt`` in ``run_dir``.
        CheckpointError: the file is unreadable or not a genlab checkpoint, or its config names
            anything but genlab's classes and the trusted modules' (nothing is built then).

    Example:
        >>> model = genlab.load_run("outputs/2026-11-25/10-00-00")
        >>> x = model.sample(1000)
        >>> model = genlab.load_run("outputs/my-plugin-run", trusted=["mypkg"])
    """
    ckpt = load_checkpoint(run_dir)
    path = Path(run_dir) / CHECKPOINT
    model = _build(_section(ckpt, "model", path), path, trusted, "config.model")
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"{path}: config.model builds a {type(model).__name__}, not a model; {_RETRAIN}"
        )
    try:
        model.load_state_dict(ckpt["model"])
    except Exception as err:  # RuntimeError on missing keys or shapes, TypeError on non-dicts
        raise CheckpointError(
            f"{path}: its weights do not fit the model its config describes "
            f"({_one_line(err)}); {_RETRAIN}"
        ) from None
    return model.to(device).eval().requires_grad_(False)


def load_toy(run_dir: str | Path, trusted: Iterable[str] = ()) -> Toy:
    """The data set a run was trained on (``trusted`` as in :func:`load_run`)."""
    ckpt = load_checkpoint(run_dir)
    path = Path(run_dir) / CHECKPOINT
    return _build(_section(ckpt, "data", path), path, trusted, "config.data")


def _probe_write(where: Path, inside: bool) -> None:
    """Make and remove a file in ``where`` (``inside``) or a dir below it, as the run will:
    permissions, a read-only mount, and file systems that refuse (``/proc``) all show."""
    if inside:
        fd, name = tempfile.mkstemp(dir=where, prefix=".genlab-probe-")
        os.close(fd)
        os.unlink(name)
    else:
        os.rmdir(tempfile.mkdtemp(dir=where, prefix=".genlab-probe-"))


def check_run_dir(run_dir: str | Path, resume: bool, key: str = "hydra.run.dir") -> None:
    """Refuse to start a run in a dir that cannot be written, that holds another run's
    outputs (unless resuming), or that another genlab process is using. Leaves nothing
    behind: whether the dir can be written is tried with a file that is removed at once.

    Raises:
        RunDirError: naming the dir and the file found, and how to resume or where else to go.
    """
    run_dir = Path(run_dir)
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    why = None
    if not existing.is_dir():
        why = "is not a directory"
    else:
        try:
            _probe_write(existing, inside=existing == run_dir)
        except OSError as e:
            why = f"cannot be written ({e.strerror or type(e).__name__})"
    if why:
        raise RunDirError(
            f"cannot write the run dir {run_dir}: {existing} {why}; choose another with {key}=..."
        )
    RunLock.check(run_dir, key)
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not resume:
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(found)}); resume it with "
            f"train.resume=true hydra.run.dir={run_dir}, or write elsewhere: leave "
            "hydra.run.dir unset for a new unique dir"
        )


class RunLock:
    """A run dir's (or a sweep dir's) one writer: an advisory lock (``fcntl.flock``) on
    ``<dir>/.lock``, held while the run trains and writes.

    A second process on the same dir is refused in one line naming the holder's PID, which
    the holder writes into the file. The kernel drops the lock when its process ends, however
    it ends, so a lock file left by a killed run blocks nothing: the next run (a resume) takes
    it, and removes the temporary files of the writes that were killed mid-way
    (:func:`genlab.files.remove_temps`). A process may take the lock of a dir it already
    holds (the command takes it before Hydra writes the run dir; the run takes it again):
    the lock is released when the outermost holder releases it. Where ``fcntl`` is missing
    (Windows) no lock is taken.

    Example:
        >>> with RunLock(run_dir):
        ...     train_and_write()
    """

    NAME = ".lock"
    #: Seconds a take retries while another process only checks the lock.
    PATIENCE = 1.0
    _held: dict[Path, list[int]] = {}  # lock file -> [descriptor, depth], in this process

    def __init__(self, run_dir: str | Path, key: str = "hydra.run.dir") -> None:
        self.path = Path(os.path.abspath(Path(run_dir) / self.NAME))
        self.key = key  # the setting that chooses the dir, for the message

    @classmethod
    def check(cls, run_dir: str | Path, key: str = "hydra.run.dir") -> None:
        """Refuse (``RunInUse``) if another live process holds the lock of ``run_dir``;
        takes nothing (a shared lock for an instant) and creates nothing."""
        path = Path(os.path.abspath(Path(run_dir) / cls.NAME))
        if fcntl is None or path in cls._held or not path.is_file():
            return
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            cls._take(fd, path, fcntl.LOCK_SH, 0.0, key)
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    @classmethod
    def _take(cls, fd: int, path: Path, kind: int, patience: float, key: str) -> None:
        deadline = time.monotonic() + patience
        while True:
            try:
                fcntl.flock(fd, kind | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        raise RunInUse(
            f"{path.parent} is in use by another genlab process (PID {holder}): wait for "
            f"it to end, or choose another {key}"
        )

    def acquire(self) -> RunLock:
        """Take the lock (or, if this process holds it, deepen it); raise ``RunInUse`` if
        another process holds it."""
        if fcntl is None:
            return self
        if self.path in self._held:
            self._held[self.path][1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._take(fd, self.path, fcntl.LOCK_EX, self.PATIENCE, self.key)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._held[self.path] = [fd, 1]
        for stale in remove_temps(self.path.parent):  # the wrecks of a killed writer
            log.info("removed %s, left by a write that never finished", stale)
        return self

    def release(self) -> None:
        """Undo one :meth:`acquire`; the last one releases the lock (the file stays: removing
        it would race with a process opening it)."""
        held = self._held.get(self.path)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.path]
            os.close(held[0])

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
