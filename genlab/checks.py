"""The argument checks every module shares, each raising one ``ValueError`` that names the
setting, the bad value and what is allowed.

``check_int("train.steps", 0, minimum=1)`` raises ``train.steps must be an int >= 1, got 0``;
``check_choice("activation", "rleu", ACTIVATIONS)`` raises ``unknown activation 'rleu'; choose
one of: tanh, relu, ...``. The composition root turns these into one-line config errors, so
the messages here are what a user reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral, Real

__all__ = ["check_int", "check_choice", "check_positive", "check_fraction"]


def check_int(
    name: str, value, minimum: int | None = None, maximum: int | None = None, *, none: bool = False
) -> int | None:
    """``value`` if it is an int (not a bool) within ``[minimum, maximum]``, else raise.

    Arguments:
        name: the setting, as the user writes it (``train.steps``, ``couplings``).
        value: the value to check; numpy integers count as ints.
        minimum, maximum: inclusive bounds (``None``: unbounded).
        none: also accept ``None`` (a setting that can be switched off with ``null``).

    Returns:
        ``value`` as a Python int (or ``None``).
    """
    if value is None and none:
        return None
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum is not None and maximum is not None:
            rule = f"an int in [{minimum}, {maximum}]"
        elif minimum is not None:
            rule = f"an int >= {minimum}"
        elif maximum is not None:
            rule = f"an int <= {maximum}"
        else:
            rule = "an int"
        raise ValueError(f"{name} must be {rule}{' or null' if none else ''}, got {value!r}")
    return int(value)


def check_positive(name: str, value, *, zero: bool = False, none: bool = False) -> float | None:
    """``value`` if it is a real number > 0 (``>= 0`` with ``zero``), else raise; ``None`` is
    accepted with ``none``."""
    if value is None and none:
        return None
    ok = isinstance(value, Real) and not isinstance(value, bool)
    if not (ok and (value >= 0 if zero else value > 0)):
        rule = ">= 0" if zero else "> 0"
        rule += " or null" if none else ""
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return float(value)


def check_fraction(name: str, value) -> float:
    """``value`` if it is a real number in ``[0, 1)``, else raise (an EMA decay, say)."""
    ok = isinstance(value, Real) and not isinstance(value, bool)
    if not (ok and 0 <= value < 1):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_choice(name: str, value, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options``, else raise ``unknown <name> <value>; choose one
    of: ...`` (the options in their given order)."""
    options = list(options)
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(options)}")
    return value
