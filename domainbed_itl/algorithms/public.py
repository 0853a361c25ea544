"""ERM_ITL, RSC_ITL and the other loss variants, built on a clone of the public DomainBed.

The public ERM and RSC call F.cross_entropy inside update(), so overriding a loss method is not
enough there: each variant here subclasses the clone's own class (its networks, optimiser,
hparams and checkpoints stay the clone's) and re-states update() with our loss. The update
relies only on what every public algorithm has: `featurizer`, `classifier`, `optimizer`,
`predict` and `hparams`. RSC follows Huang et al. (2020) as the public RSC does, muting
features above the (1 - rsc_f_drop_factor) gradient quantile in the examples above the
(1 - rsc_b_drop_factor) quantile of confidence drop, but scores the features with the
gradient of minus our loss, as the engine's RSC_ITL does.

Called by domainbed_itl.public_hook once the clone's `domainbed.algorithms` /
`domainbed.hparams_registry` has been imported; nothing here imports `domainbed` itself.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from domainbed_itl.algorithms.variants import VARIANTS, fresh

Minibatches = list[tuple[torch.Tensor, torch.Tensor]]


def _pooled(minibatches: Minibatches) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])


def _step(algorithm: Any, loss: torch.Tensor) -> dict[str, float]:
    algorithm.optimizer.zero_grad()
    loss.backward()
    algorithm.optimizer.step()
    return {"loss": loss.item()}


def erm_update(self, minibatches: Minibatches, unlabeled=None) -> dict[str, float]:
    x, y = _pooled(minibatches)
    return _step(self, self.loss_fn(self.predict(x), y))


def rsc_update(self, minibatches: Minibatches, unlabeled=None) -> dict[str, float]:
    x, y = _pooled(minibatches)
    features = self.featurizer(x)
    logits = self.classifier(features)
    scores = torch.autograd.grad(-self.loss_fn(logits, y), features)[0]
    with torch.no_grad():
        f_level = 1 - self.hparams["rsc_f_drop_factor"]
        b_level = 1 - self.hparams["rsc_b_drop_factor"]
        keep_feature = scores < torch.quantile(scores, f_level, dim=1, keepdim=True)
        p_true = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
        p_muted = F.softmax(self.classifier(features * keep_feature), 1)
        drop = p_true - p_muted.gather(1, y[:, None]).squeeze(1)
        keep_example = drop < torch.quantile(drop, b_level)
        mask = (keep_feature | keep_example[:, None]).to(features.dtype)
    return _step(self, self.loss_fn(self.classifier(features * mask), y))


UPDATES = {"ERM": erm_update, "RSC": rsc_update}


def build_class(module: ModuleType, name: str) -> type:
    """`name` (a key of VARIANTS) as a subclass of the clone's base class in `module`."""
    base_name, choice = VARIANTS[name]
    base = getattr(module, base_name)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        base.__init__(self, input_shape, num_classes, num_domains, hparams)
        self.loss_fn = choice.build(hparams)

    return type(name, (base,), {
        "__init__": __init__, "update": UPDATES[base_name],
        "__module__": module.__name__, "__qualname__": name,
        "__doc__": f"The public {base_name} trained with the {choice.suffix} loss (domainbed-itl).",
    })


def register_algorithms(module: ModuleType) -> list[str]:
    """Add every variant whose base the clone has to its ALGORITHMS and module namespace
    (what get_algorithm_class looks in); returns the names of bases it lacks."""
    missing = []
    for name, (base_name, _) in VARIANTS.items():
        if not isinstance(getattr(module, base_name, None), type):
            missing.append(base_name)
            continue
        setattr(module, name, build_class(module, name))
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
        base_name, choice = VARIANTS[algorithm]
        values = original(base_name, dataset, random_seed)
        for hp in choice.hparams:
            state = np.random.RandomState(seed_hash(random_seed, hp.name))
            values[hp.name] = (fresh(hp.default), hp.draw(state))
        return values

    _hparams.domainbed_itl = True
    _hparams.__doc__ = original.__doc__
    module._hparams = _hparams
