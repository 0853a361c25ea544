"""Classification losses that replace nn.CrossEntropyLoss in one line: ITL, its Taylor family,
and the hand-designed losses the paper compares with. `get_loss(name, **kwargs)` builds one by
its registry name: ce, bce, focal, sce, isce, gce, ls, taylor, itl. The families that can be
learned (Taylor, iSCE, plugins) are described, one file each, in domainbed_itl.losses.families.
"""

from domainbed_itl.losses.baselines import (
    ISCE,
    BinaryCrossEntropy,
    CrossEntropy,
    FocalLoss,
    GeneralizedCE,
    LabelSmoothingCE,
    SymmetricCE,
    symmetric_ce,
)
from domainbed_itl.losses.loss_registry import LOSSES, get_loss, register_loss
from domainbed_itl.losses.taylor_polynomial import (
    ITL,
    ITL_OMEGA,
    TaylorLoss,
    n_taylor_params,
    taylor_loss,
    taylor_terms,
)

__all__ = [
    "ISCE", "ITL", "ITL_OMEGA", "LOSSES", "BinaryCrossEntropy", "CrossEntropy", "FocalLoss",
    "GeneralizedCE", "LabelSmoothingCE", "SymmetricCE", "TaylorLoss", "get_loss",
    "n_taylor_params", "register_loss", "symmetric_ce", "taylor_loss", "taylor_terms",
]
