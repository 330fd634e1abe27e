"""genlab: NICE, a continuous normalizing flow, a rectified flow and a VP diffusion model on 2D
toy distributions with exact densities, scored by one yardstick.

The lab from Python: :func:`train`, :func:`load` and :func:`sweep` (see :mod:`genlab.api`);
:func:`load_run` and :func:`load_toy` rebuild a run's model and data set.
"""

from genlab.api import Run, Sweep, load, sweep, train
from genlab.runs import CheckpointError, load_run, load_toy

__all__ = ["train", "load", "sweep", "Run", "Sweep", "load_run", "load_toy", "CheckpointError"]
__version__ = "0.2.0.dev0"
