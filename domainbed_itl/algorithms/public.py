"""ERM_ITL, RSC_ITL and the other loss variants, built on a clone of the public DomainBed.

Each variant subclasses the clone's own base class (its networks, optimiser, hparams and
checkpoints stay the clone's) and is built by core.variant_class, the function that builds
it in this engine too: the public ERM and RSC call F.cross_entropy inside update(), so the
variant also takes the update() re-stated in public_updates, which goes through its loss.

Called by domainbed_itl.public_hook once the clone's `domainbed.algorithms` /
`domainbed.hparams_registry` has been imported; nothing here imports `domainbed` itself.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from domainbed_itl.algorithms.core import variant_class
from domainbed_itl.algorithms.public_updates import UPDATES
from domainbed_itl.algorithms.variants import VARIANTS, fresh


def register_algorithms(module: ModuleType) -> list[str]:
    """Add every variant whose base the clone has to its ALGORITHMS and module namespace
    (what get_algorithm_class looks in); returns the names of bases it lacks."""
    missing = []
    for name, variant in VARIANTS.items():
        base = getattr(module, variant.base, None)
        if not isinstance(base, type):
            missing.append(variant.base)
            continue
        update = {"update": UPDATES[variant.base]}
        setattr(module, name, variant_class(name, variant, base, module.__name__, update))
        if name not in module.ALGORITHMS:
            module.ALGORITHMS.append(name)
    return sorted(set(missing))


def register_hparams(module: ModuleType) -> None:
    """Wrap the clone's `_hparams` so a variant gets its base's space plus its loss's, each
    drawn from RandomState(seed_hash(seed, name)) as the clone draws its own."""
    original = module._hparams
    if getattr(original, "domainbed_itl", False):
        return
    seed_hash = module.misc.seed_hash

    def _hparams(algorithm: str, dataset: str, random_seed: int) -> dict[str, Any]:
        if algorithm not in VARIANTS:
            return original(algorithm, dataset, random_seed)
        variant = VARIANTS[algorithm]
        values = original(variant.base, dataset, random_seed)
        for hp in variant.loss.hparams:
            state = np.random.RandomState(seed_hash(random_seed, hp.name))
            values[hp.name] = (fresh(hp.default), hp.draw(state))
        return values

    _hparams.domainbed_itl = True
    _hparams.__doc__ = original.__doc__
    module._hparams = _hparams
