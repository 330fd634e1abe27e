"""How much memory a request needs, against how much the machine has.

genlab refuses a setting or a call whose memory would not fit before it starts, in one line
naming the setting and the size (:class:`genlab.errors.TooLarge`), instead of running until
the allocator fails, gigabytes later. The budget is :data:`RAM_SHARE` of the machine's memory:
the physical memory, or the container's limit (cgroup) when that is smaller. The estimates
are stated where they are made (:func:`genlab.runner.check_memory` for a run's settings, the
chunked ``sample`` of :class:`genlab.models.base.Model` for a result).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from genlab.errors import TooLarge

__all__ = ["RAM_SHARE", "machine_memory", "budget", "size", "check_fits"]

#: The share of the machine's memory one request may take.
RAM_SHARE = 0.5

_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def machine_memory(device=None) -> int | None:
    """Bytes of memory this process may use: on a CUDA ``device``, the GPU's; else the
    physical memory, or the cgroup's limit when it is lower; ``None`` where neither can be
    read (then nothing is refused)."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit():
            sizes.append(int(text))
    return min(sizes) if sizes else None


def budget(device=None) -> int | None:
    """The bytes one request may take (:data:`RAM_SHARE` of :func:`machine_memory`)."""
    total = machine_memory(device)
    return None if total is None else int(RAM_SHARE * total)


def size(nbytes: float) -> str:
    """``nbytes`` for a reader: ``512 MB``, ``8.6 GB``, ``1.3 TB`` (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{nbytes:.0f} B"


def check_fits(what: str, nbytes: float, fix: str, device=None) -> None:
    """Refuse a request that needs more than :func:`budget`.

    Arguments:
        what: the request, as the user wrote it (``train.batch_size=100000000``).
        nbytes: the memory it needs, estimated.
        fix: what to do instead.
        device: where the memory is needed (``None``: the host; a CUDA device: the GPU).

    Raises:
        TooLarge: ``<what> needs about <size> of memory, over half of the <size> this machine
            has; <fix>``.
    """
    allowed = budget(device)
    if allowed is not None and nbytes > allowed:
        share = "half" if RAM_SHARE == 0.5 else f"{RAM_SHARE:.0%}"
        gpu = device is not None and torch.device(device).type == "cuda"
        raise TooLarge(
            f"{what} needs about {size(nbytes)} of memory, over {share} of the "
            f"{size(machine_memory(device))} {'the GPU' if gpu else 'this machine'} has; {fix}"
        )
