"""The networks the algorithms are built from, sized as in the public DomainBed.

Layer sizes, normalisation and initialisation follow the public benchmark so that accuracies
are comparable with published sweeps. ImageNet weights are never downloaded here: they are read
from torchvision's cache (``$TORCH_HOME/hub/checkpoints``) or from a file named by an
environment variable, and a missing file is reported with what to do about it. Set the hparam
``pretrained`` to false to start a ResNet from random weights instead.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from domainbed.lib.cli import UsageError


class PretrainedWeightsUnavailable(UsageError, RuntimeError):
    """ImageNet weights were asked for and no local copy exists."""


class MLP(nn.Module):
    """Fully connected ReLU network; dropout sits between each linear layer and its ReLU."""

    def __init__(self, n_inputs: int, n_outputs: int, hparams: dict[str, Any]):
        super().__init__()
        width = hparams["mlp_width"]
        self.input = nn.Linear(n_inputs, width)
        self.dropout = nn.Dropout(hparams["mlp_dropout"])
        self.hiddens = nn.ModuleList(
            nn.Linear(width, width) for _ in range(hparams["mlp_depth"] - 2))
        self.output = nn.Linear(width, n_outputs)
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.dropout(self.input(x)))
        for hidden in self.hiddens:
            x = F.relu(self.dropout(hidden(x)))
        return self.output(x)


class MNIST_CNN(nn.Module):
    """Four 3x3 convolutions, each followed by ReLU then GroupNorm, then a global mean pool.

    GroupNorm rather than BatchNorm keeps the features independent of how the domains are mixed
    in a batch.
    """

    n_outputs = 128

    def __init__(self, input_shape: tuple[int, ...]):
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.bn0 = nn.GroupNorm(8, 64)
        self.bn1 = nn.GroupNorm(8, 128)
        self.bn2 = nn.GroupNorm(8, 128)
        self.bn3 = nn.GroupNorm(8, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(F.relu(self.conv1(x)))
        x = self.bn1(F.relu(self.conv2(x)))
        x = self.bn2(F.relu(self.conv3(x)))
        x = self.bn3(F.relu(self.conv4(x)))
        return x.mean(dim=(2, 3))


# Where each set of ImageNet weights can come from: (environment variable, cache file name).
# The file names are torchvision's (and timm's for the AugMix ResNet-50), so a copy fetched by
# either library on a machine with internet is found here.
_WEIGHT_SOURCES = {
    "resnet18": ("DOMAINBED_RESNET18_WEIGHTS", "resnet18-f37072fd.pth"),
    "resnet50": ("DOMAINBED_RESNET50_WEIGHTS", "resnet50-0676ba61.pth"),
    "resnet50_augmix": ("DOMAINBED_RESNET50_AUGMIX_WEIGHTS", "resnet50_ram-a26f946b.pth"),
}


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights for `arch`, read from disk only (this may run without internet)."""
    env_var, file_name = _WEIGHT_SOURCES[arch]
    path = os.environ.get(env_var)
    if path:
        if not os.path.isfile(path):
            raise PretrainedWeightsUnavailable(f"{env_var}={path} is not a file")
    else:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", file_name)
        if not os.path.isfile(path):
            raise PretrainedWeightsUnavailable(
                f"no ImageNet weights for {arch}: put {file_name} in "
                f"{os.path.dirname(path)} (torchvision's cache, under $TORCH_HOME), "
                f"or set {env_var}=/path/to/weights.pth, "
                "or pass --hparams '{\"pretrained\": false}' to start from random weights")
    return torch.load(path, map_location="cpu", weights_only=True)


class ResNet(nn.Module):
    """A ResNet-18 or -50 trunk without its ImageNet classifier, with optional frozen BatchNorm.

    `hparams['resnet18']` picks ResNet-18; otherwise ResNet-50, with the AugMix-trained weights
    when `hparams['resnet50_augmix']` is set (as in the current public DomainBed) and
    torchvision's otherwise. `hparams.get('pretrained', True)` false skips ImageNet weights.
    """

    def __init__(self, input_shape: tuple[int, ...], hparams: dict[str, Any]):
        super().__init__()
        if hparams["resnet18"]:
            arch, self.network, self.n_outputs = "resnet18", torchvision.models.resnet18(), 512
        else:
            arch = "resnet50_augmix" if hparams["resnet50_augmix"] else "resnet50"
            self.network, self.n_outputs = torchvision.models.resnet50(), 2048
        self.network.fc = nn.Identity()
        if hparams.get("pretrained", True):
            state = imagenet_state_dict(arch)
            self.network.load_state_dict(
                {k: v for k, v in state.items() if not k.startswith("fc.")})

        channels = input_shape[0]
        if channels != 3:
            # Reuse the RGB filters cyclically so a pretrained trunk still sees familiar inputs.
            rgb = self.network.conv1.weight.data
            self.network.conv1 = nn.Conv2d(
                channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.network.conv1.weight.data.copy_(rgb[:, [i % 3 for i in range(channels)]])

        self.freeze_bn_stats = bool(hparams["freeze_bn"])
        self.dropout = nn.Dropout(hparams["resnet_dropout"])
        if self.freeze_bn_stats:
            self._freeze_bn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.network(x))

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if self.freeze_bn_stats:
            self._freeze_bn()
        return self

    def _freeze_bn(self) -> None:
        # Batches of a few images per domain give poor BatchNorm statistics; keep ImageNet's.
        for module in self.network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


def Featurizer(input_shape: tuple[int, ...], hparams: dict[str, Any]) -> nn.Module:
    """The feature extractor that suits inputs of `input_shape` (C, H, W) or (D,)."""
    if len(input_shape) == 1:
        return MLP(input_shape[0], hparams["mlp_width"], hparams)
    if tuple(input_shape[1:3]) == (28, 28):
        return MNIST_CNN(input_shape)
    if tuple(input_shape[1:3]) == (224, 224):
        if hparams.get("vit"):
            raise NotImplementedError("ViT featurizers are not available; set the hparam vit false")
        return ResNet(input_shape, hparams)
    raise NotImplementedError(f"no featurizer for inputs of shape {tuple(input_shape)}")


def Classifier(in_features: int, out_features: int, is_nonlinear: bool = False) -> nn.Module:
    """A linear head, or a three-layer MLP head that halves its width twice."""
    if not is_nonlinear:
        return nn.Linear(in_features, out_features)
    return nn.Sequential(
        nn.Linear(in_features, in_features // 2),
        nn.ReLU(),
        nn.Linear(in_features // 2, in_features // 4),
        nn.ReLU(),
        nn.Linear(in_features // 4, out_features),
    )
