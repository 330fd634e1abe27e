"""``python -m genlab.knobs``: the table of every setting, generated from ``conf/``.

Each row is one key of a shipped config (the main config, every model, toy and logger) with its
value there and the comment written beside it (or on the lines just above it), so the table
in ``docs/knobs.md`` is the configs themselves, never a copy kept by hand; a test checks that
the page equals what this prints.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from importlib import resources

__all__ = ["rows", "markdown", "main"]

_LINE = re.compile(
    r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)\s*(?:#\s?(?P<note>.*))?$"
)
_SKIP = {"defaults", "hydra", "_target_"}


def rows(text: str, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """``(dotted key, value, comment)`` for each key of one YAML file's text, in file order.

    A key's comment is its inline comment, after any whole-line comments just above it (a
    blank line or another key ends them). ``defaults``, ``hydra`` and ``_target_`` are left out
    with everything under them: they are Hydra's, not knobs.
    """
    stack: list[tuple[int, str]] = []  # (indent, key) of the open parents
    above: list[str] = []
    skip_below: int | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if not stripped.startswith("# @package"):
                above.append(stripped.lstrip("#").strip())
            continue
        m = _LINE.match(line)
        if m is None:
            above = []
            continue
        indent, key = len(m["indent"]), m["key"]
        if skip_below is not None and indent > skip_below:
            above = []
            continue
        skip_below = None
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if key in _SKIP:
            skip_below, above = indent, []
            continue
        path = ".".join([*(k for _, k in stack), key])
        note = " ".join([*above, m["note"] or ""]).strip()
        above = []
        stack.append((indent, key))
        yield prefix + path, m["value"].strip(), note


def _table(title: str, entries: list[tuple[str, str, str]]) -> str:
    out = [f"## {title}", "", "| key | value | what it does |", "|---|---|---|"]
    for key, value, note in entries:
        cell = f"`{value}`" if value else ""
        out.append(f"| `{key}` | {cell} | {note.replace('|', '/')} |")
    return "\n".join(out) + "\n"


def markdown() -> str:
    """The whole page: the main config, then each model, each toy and each logger, one table
    each."""
    conf = resources.files("genlab.conf")
    parts = [
        "# Every setting\n\n"
        "Generated from `conf/` by `python -m genlab.knobs > docs/knobs.md`: each key with its "
        "value in the shipped config and the comment beside it there. Override any of them on "
        "the command line (`key=value`); a model's keys apply when that model is chosen "
        "(`model=cnf model.kinetic=0.01`), and its `train.*` keys replace the main config's.\n",
        _table(
            "Main config (`conf/config.yaml`)",
            list(rows(conf.joinpath("config.yaml").read_text(encoding="utf-8"))),
        ),
    ]
    for group in ("model", "data", "logger"):
        for entry in sorted(conf.joinpath(group).iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".yaml"):
                continue
            name = entry.name[: -len(".yaml")]
            prefix = "" if group == "model" else f"{group}."
            entries = list(rows(entry.read_text(encoding="utf-8"), prefix))
            parts.append(_table(f"`{group}={name}` (`conf/{group}/{entry.name}`)", entries))
    return "\n".join(parts)


def main() -> None:
    sys.stdout.write(markdown())


if __name__ == "__main__":
    main()
