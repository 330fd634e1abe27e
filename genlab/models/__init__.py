"""The models; each is a :class:`genlab.models.base.Model`."""

from genlab.models.base import Model
from genlab.models.bridge import SchrodingerBridge
from genlab.models.cnf import CNF
from genlab.models.diffusion import Diffusion
from genlab.models.distill import DistilledFlow
from genlab.models.flow import ContinuousFlow
from genlab.models.glow import Glow
from genlab.models.invertible import InvertibleFlow
from genlab.models.meanflow import MeanFlow
from genlab.models.nice import NICE
from genlab.models.nsf import NSF
from genlab.models.realnvp import RealNVP
from genlab.models.rectified_flow import RectifiedFlow

__all__ = [
    "Model",
    "InvertibleFlow",
    "ContinuousFlow",
    "NICE",
    "RealNVP",
    "Glow",
    "NSF",
    "CNF",
    "RectifiedFlow",
    "SchrodingerBridge",
    "Diffusion",
    "MeanFlow",
    "DistilledFlow",
]
