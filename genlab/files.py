"""Every file genlab writes, written atomically, in UTF-8, and refused in one line when it
cannot be written.

:func:`atomic` is the one way: the writer writes to a unique temporary name in the target's
dir (``.<stem>.tmp-<pid>-<id><suffix>``: hidden, and with the target's suffix, so that torch,
numpy, matplotlib and Pillow choose the right format), the data is flushed to the disk with
``fsync``, and ``os.replace`` puts it in place in one step. A reader sees the old file or the
new one, never half of one; two processes writing the same name never share a temporary file;
a write that fails removes its temporary file, so a full disk is not kept full by the wreck.
:func:`atomic_group` does the same for several files that belong together (a report's
leaderboard and gallery): all are replaced, or none.

A write that fails with an ``OSError``, or with any error while the disk is full (torch's
``RuntimeError: unexpected pos`` says nothing of the disk), raises :class:`WriteError`, whose
one line names the file and, when it is so, that the disk is full. The callers that know what
survived (the run's last checkpoint) add it to the message.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from genlab.errors import WriteError

__all__ = [
    "ENCODING",
    "atomic",
    "atomic_group",
    "write_text",
    "write_json",
    "write_csv",
    "read_text",
    "remove_temps",
    "is_temp",
    "put_text",
]

#: The encoding of every text file genlab writes or reads, whatever the locale says.
ENCODING = "utf-8"

#: Below this many free bytes, a failed write is taken to have met a full disk.
FULL_BELOW = 1 << 20

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(3)}{path.suffix}")


_TEMP = re.compile(r"\..+\.tmp-\d+-[0-9a-f]{6}(\.\w+)?")


def is_temp(path: str | Path) -> bool:
    """Whether ``path`` is the temporary file of a write (:func:`atomic`)."""
    return bool(_TEMP.fullmatch(Path(path).name))


def remove_temps(where: str | Path) -> list[Path]:
    """Remove the temporary files of writes that never finished in the dir ``where`` and
    below it (a process killed mid-write cannot remove its own); returns them. Call it only while no
    other process writes there (a run dir under its :class:`genlab.runs.RunLock`)."""
    stale = [p for p in Path(where).rglob(".*.tmp-*") if is_temp(p)]
    _remove(stale)
    return stale


def _errors(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or during."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def disk_full(err: BaseException, where: Path) -> bool:
    """Whether ``err`` is (or was caused by) a full disk: an ``ENOSPC`` or ``EDQUOT`` in its
    chain, or fewer than :data:`FULL_BELOW` bytes left on the file system of ``where``."""
    if any(getattr(e, "errno", None) in _FULL_ERRNOS for e in _errors(err)):
        return True
    try:
        return shutil.disk_usage(where).free < FULL_BELOW
    except OSError:
        return False


def _fsync(path: Path) -> None:
    """Flush a written file to the disk (what ``os.replace`` then publishes is complete)."""
    fd = os.open(path, os.O_RDWR)  # writable: Windows' fsync needs it
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(where: Path) -> None:
    """Make the renames in ``where`` durable (best effort: not every OS opens a dir)."""
    try:
        fd = os.open(where, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)


def _write_error(err: BaseException, target: Path) -> WriteError | None:
    """The one-line error for a write of ``target`` that failed with ``err``; ``None`` when
    ``err`` is not about writing (a bug in the writer keeps its traceback)."""
    if isinstance(err, WriteError) and err.__cause__ is not None:
        err = err.__cause__  # a nested write's failure, told of the outer target
    if disk_full(err, target.parent):
        return WriteError(f"no space left on device writing {target}", target, full=True)
    if isinstance(err, OSError):
        reason = err.strerror or str(err) or type(err).__name__
        return WriteError(f"cannot write {target}: {reason}", target, full=False)
    return None


@contextlib.contextmanager
def atomic_group(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield one temporary path per target, to be written in their order; when the block ends
    without an error, flush every file and put them in place one after another, else remove
    them all and leave every target as it was.

    The renames take an instant and do not fail on a healthy file system (same dir, same
    disk): what can fail, writing and flushing, happens before any target is touched.

    Raises:
        WriteError: the block raised an ``OSError``, or any error while the disk is full; the
            message names the target being written (a nested :func:`atomic` of a temporary
            path is reported as its target).
    """
    targets = [Path(p) for p in paths]
    temps = [_temp_name(p) for p in targets]
    syncing = None
    try:
        yield temps
        for i, tmp in enumerate(temps):
            syncing = i
            _fsync(tmp)
    except BaseException as err:
        if syncing is not None:
            failed = targets[syncing]
        elif isinstance(err, WriteError) and err.path in temps:
            failed = targets[temps.index(err.path)]
        else:  # the writer was at the last file it had begun (or at the first)
            begun = [t for tmp, t in zip(temps, targets, strict=True) if tmp.exists()]
            failed = begun[-1] if begun else targets[0]
        error = _write_error(err, failed) if isinstance(err, Exception) else None
        _remove(temps)
        if error is None:
            raise
        raise error from err
    for i, (tmp, target) in enumerate(zip(temps, targets, strict=True)):
        try:
            os.replace(tmp, target)
        except OSError as err:
            _remove(temps[i:])
            raise _write_error(err, target) from err
    for where in {t.parent for t in targets}:
        _fsync_dir(where)


@contextlib.contextmanager
def atomic(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through (see the module's docstring).

    Example:
        >>> with atomic(run_dir / "model.pt") as tmp:
        ...     torch.save(state, tmp)
    """
    with atomic_group([path]) as (tmp,):
        yield tmp


def put_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` in UTF-8, as it is (no newline translation on any OS); not
    atomic by itself: for a temporary path of :func:`atomic` or :func:`atomic_group`."""
    Path(path).write_bytes(text.encode(ENCODING))


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, in UTF-8."""
    with atomic(path) as tmp:
        put_text(tmp, text)


def write_json(path: str | Path, value: object) -> None:
    """Write ``value`` as indented JSON (and a final newline) to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def csv_text(fields: Sequence[str], rows: Iterable[Mapping], **options) -> str:
    """Rows as CSV text with a header (``options`` go to ``csv.DictWriter``)."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fields, **options)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_csv(path: str | Path, fields: Sequence[str], rows: Iterable[Mapping], **options) -> None:
    """Write rows as CSV with a header to ``path`` atomically (``options`` as in
    :func:`csv_text`)."""
    write_text(path, csv_text(fields, rows, **options))


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path``."""
    return Path(path).read_text(encoding=ENCODING)
