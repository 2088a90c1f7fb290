"""Similarity losses (LNCC, MIND-SSC, NGF, MI) and smoothness regularisers; torch only.

Every loss returns a scalar tensor to minimise, the mean over the batch, and
works on 2D ``(B, C, H, W)`` and 3D ``(B, C, D, H, W)`` tensors alike.
"""

from intermodal.losses._checks import ShapeError
from intermodal.losses.regularisers import diffusion, log_jacobian_penalty
from intermodal.losses.similarity import (
    lncc,
    mind_loss,
    mind_ssc,
    mutual_information_loss,
    ngf,
    nmi,
    parzen_mutual_information,
)

__all__ = [
    "ShapeError",
    "diffusion",
    "lncc",
    "log_jacobian_penalty",
    "mind_loss",
    "mind_ssc",
    "mutual_information_loss",
    "ngf",
    "nmi",
    "parzen_mutual_information",
]
