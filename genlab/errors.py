"""The errors a user can cause, each reported by the ``genlab`` command as one line.

A :class:`GenlabError` names the bad value, file or key and says what to do; the command line
prints its message alone (no traceback, unless ``HYDRA_FULL_ERROR=1``) and exits non-zero.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["GenlabError", "ConfigError", "CheckpointError", "RunDirError", "Diverged"]


class GenlabError(Exception):
    """An error of the user's making: a bad setting, file or run dir."""


class ConfigError(GenlabError, ValueError):
    """A config value that genlab cannot run with."""


class CheckpointError(GenlabError, ValueError):
    """A ``model.pt`` that is not a readable genlab checkpoint of the expected model."""


class RunDirError(GenlabError, OSError):
    """A run dir that holds another run, or that cannot be written."""


class Diverged(GenlabError, FloatingPointError):
    """Training produced a non-finite loss."""
