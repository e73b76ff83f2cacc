"""Tomographic reconstruction: geometry, matched projectors, FBP, iterative methods, DART."""
from .alignment import Alignment, align
from .api import reconstruct
from .dart import dart
from .fbp import fbp, gridrec
from .geometry import TiltGeometry, align_projections
from .iterative import cgls, os_sart, sirt, tv
from .metrics import reprojection_nrmse
from .projectors import backproject, project

__all__ = ["Alignment", "TiltGeometry", "align", "align_projections", "backproject", "cgls", "dart", "fbp", "gridrec", "os_sart",
           "project", "reconstruct", "reprojection_nrmse", "sirt", "tv"]
