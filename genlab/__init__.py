"""genlab: NICE, continuous normalizing flows and rectified flows on 2D toy distributions."""

from genlab.runs import CheckpointError, load_run, load_toy

__all__ = ["load_run", "load_toy", "CheckpointError"]
__version__ = "0.1.0"
