"""The errors a user can cause, each reported by the ``genlab`` command as one line.

A :class:`GenlabError` names the bad value, file or key and says what to do; the command line
prints its message alone (no traceback, unless ``HYDRA_FULL_ERROR=1``) and exits non-zero.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "GenlabError",
    "ConfigError",
    "CheckpointError",
    "RunDirError",
    "RunInUse",
    "WriteError",
    "TooLarge",
    "Diverged",
]


class GenlabError(Exception):
    """An error of the user's making: a bad setting, file or run dir."""


class ConfigError(GenlabError, ValueError):
    """A config value that genlab cannot run with."""


class CheckpointError(GenlabError, ValueError):
    """A ``model.pt`` that is not a readable genlab checkpoint of the expected model."""


class RunDirError(GenlabError, OSError):
    """A run dir that holds another run, or that cannot be written."""


class RunInUse(RunDirError):
    """A run or sweep dir that another genlab process is writing (it holds the dir's lock)."""


class WriteError(GenlabError, OSError):
    """A file that could not be written: a full disk, or another ``OSError`` while writing.

    Attributes:
        path: the file.
        full: whether the disk (or the quota) was full.
    """

    def __init__(self, message: str, path=None, full: bool = False) -> None:
        super().__init__(message)
        self.path, self.full = path, full

    def __reduce__(self):  # picklable with its fields (a sweep's launcher may pickle it)
        return type(self), (str(self), self.path, self.full)


class TooLarge(GenlabError, ValueError):
    """A request whose result or working memory would not fit in the machine's memory."""


class Diverged(GenlabError, FloatingPointError):
    """Training produced a non-finite loss."""
