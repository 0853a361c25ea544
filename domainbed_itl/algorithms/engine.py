"""ERM_ITL, RSC_ITL and ERM with each baseline loss, registered in this project's engine.

Each is built from its entry in variants.VARIANTS by core.variant_class, the function that
also builds them in a clone of the public DomainBed: a subclass of the engine's ERM or RSC
that overrides its loss hooks and keeps its update(); its hyperparameters are its base's plus
its loss's.
"""

from __future__ import annotations

import sys

from domainbed.algorithms import get_algorithm_class, register_algorithm
from domainbed.lib.hparam_space import Bounds, HParamSpace, inherit_hparams, register_hparams
from domainbed_itl.algorithms.core import variant_class
from domainbed_itl.algorithms.variants import VARIANTS, Variant, fresh


def register_variant(name: str, variant: Variant) -> type:
    """Make, register and return the algorithm `name`, and its hyperparameter space."""
    cls = variant_class(name, variant, get_algorithm_class(variant.base), __name__)

    @register_hparams(name)
    def _space(space: HParamSpace) -> None:
        for hp in variant.loss.hparams:
            bounds = Bounds(hp.low, hp.high, hp.low_open) if hp.bounded else None
            space.add(hp.name, fresh(hp.default), hp.draw, bounds)

    inherit_hparams(name, variant.base)
    setattr(sys.modules[__name__], name, cls)  # picklable by name
    return register_algorithm(cls)


for _name, _variant in VARIANTS.items():
    register_variant(_name, _variant)
