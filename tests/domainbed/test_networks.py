"""The networks: public DomainBed sizes, ImageNet weights read only from disk, and a clear
error, saying where the file goes, when they are missing."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from domainbed import hparams_registry, networks


def resnet_hparams(**overrides) -> dict:
    hparams = hparams_registry.default_hparams("ERM", "PACS")
    hparams.update(overrides)
    return hparams


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for arch in ("RESNET18", "RESNET50", "RESNET50_AUGMIX"):
        monkeypatch.delenv(f"DOMAINBED_{arch}_WEIGHTS", raising=False)
    return tmp_path / "torch"


@pytest.fixture(scope="module")
def resnet18_imagenet_like() -> dict[str, torch.Tensor]:
    """A full torchvision ResNet-18 state dict (fc included), as the real weights file has."""
    torch.manual_seed(123)
    return torchvision.models.resnet18().state_dict()


def test_mnist_cnn_has_the_public_layer_sizes():
    net = networks.MNIST_CNN((2, 28, 28))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (2, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (2, 2)),
        (128, 128, (3, 3), (1, 1)), (128, 128, (3, 3), (1, 1))]
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert [(g.num_groups, g.num_channels) for g in norms] == [(8, 64), (8, 128), (8, 128),
                                                                (8, 128)]
    n_params = (2 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + 2 * (128 * 128 * 9 + 128) \
        + 2 * 64 + 3 * 2 * 128
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert net(torch.randn(5, 2, 28, 28)).shape == (5, networks.MNIST_CNN.n_outputs) == (5, 128)


def test_mlp_depth_width_and_dropout():
    hparams = {"mlp_width": 32, "mlp_depth": 4, "mlp_dropout": 0.5}
    mlp = networks.MLP(10, 3, hparams)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 32), (32, 32), (32, 32),
                                                                  (32, 3)]
    x = torch.randn(64, 10)
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp(x))
    mlp.train()
    assert not torch.equal(mlp(x), mlp(x))  # dropout active in training
    assert mlp(x).shape == (64, 3) and mlp.n_outputs == 3


def test_classifier_linear_and_nonlinear():
    assert isinstance(networks.Classifier(128, 7), nn.Linear)
    head = networks.Classifier(128, 7, is_nonlinear=True)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 64), (64, 32), (32, 7)]
    assert head(torch.randn(4, 128)).shape == (4, 7)


def test_featurizer_picks_by_input_shape():
    hparams = resnet_hparams(mlp_width=16, mlp_depth=3, mlp_dropout=0.0, resnet18=True,
                             pretrained=False)
    assert isinstance(networks.Featurizer((20,), hparams), networks.MLP)
    assert isinstance(networks.Featurizer((1, 28, 28), hparams), networks.MNIST_CNN)
    resnet = networks.Featurizer((3, 224, 224), hparams)
    assert isinstance(resnet, networks.ResNet) and resnet.n_outputs == 512
    with pytest.raises(NotImplementedError, match="shape"):
        networks.Featurizer((3, 64, 64), hparams)


def test_missing_weights_error_says_where_to_put_them(empty_torch_home):
    with pytest.raises(networks.PretrainedWeightsUnavailable) as err:
        networks.ResNet((3, 224, 224), resnet_hparams(resnet18=True))
    message = str(err.value)
    assert str(empty_torch_home / "hub" / "checkpoints") in message
    assert "resnet18-f37072fd.pth" in message
    assert "DOMAINBED_RESNET18_WEIGHTS" in message
    assert '"pretrained": false' in message
    assert "\n" not in message
    with pytest.raises(networks.PretrainedWeightsUnavailable, match="DOMAINBED_RESNET50_WEIGHTS"):
        networks.ResNet((3, 224, 224), resnet_hparams(resnet50_augmix=False))
    with pytest.raises(networks.PretrainedWeightsUnavailable, match="resnet50_ram-a26f946b"):
        networks.ResNet((3, 224, 224), resnet_hparams())


def test_weights_env_var_naming_a_missing_file_is_an_error(empty_torch_home, monkeypatch,
                                                           tmp_path):
    monkeypatch.setenv("DOMAINBED_RESNET18_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(networks.PretrainedWeightsUnavailable, match="nope.pth is not a file"):
        networks.ResNet((3, 224, 224), resnet_hparams(resnet18=True))


def test_weights_come_from_torchvision_cache(empty_torch_home, resnet18_imagenet_like):
    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(resnet18_imagenet_like, checkpoints / "resnet18-f37072fd.pth")
    net = networks.ResNet((3, 224, 224), resnet_hparams(resnet18=True))
    trunk = net.network.state_dict()
    assert not any(k.startswith("fc.") for k in trunk)
    for key, value in trunk.items():
        torch.testing.assert_close(value, resnet18_imagenet_like[key], rtol=0, atol=0)


def test_weights_from_env_var_and_channel_adaptation(empty_torch_home, monkeypatch, tmp_path,
                                                     resnet18_imagenet_like):
    path = tmp_path / "my_resnet18.pth"
    torch.save(resnet18_imagenet_like, path)
    monkeypatch.setenv("DOMAINBED_RESNET18_WEIGHTS", str(path))
    net = networks.ResNet((5, 224, 224), resnet_hparams(resnet18=True))
    rgb = resnet18_imagenet_like["conv1.weight"]
    adapted = net.network.conv1.weight
    assert adapted.shape == (64, 5, 7, 7)
    for channel in range(5):  # RGB filters reused cyclically
        torch.testing.assert_close(adapted[:, channel], rgb[:, channel % 3], rtol=0, atol=0)
    assert net(torch.randn(2, 5, 224, 224)).shape == (2, 512)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_running_statistics(freeze):
    net = networks.ResNet((3, 224, 224), resnet_hparams(resnet18=True, pretrained=False,
                                                        freeze_bn=freeze))
    net.train()
    bn = net.network.bn1
    assert bn.training is not freeze
    before = bn.running_mean.clone()
    net(torch.randn(2, 3, 224, 224) * 3 + 1)
    assert torch.equal(bn.running_mean, before) is freeze


def test_resnet50_outputs_and_dropout():
    net = networks.ResNet((3, 224, 224), resnet_hparams(pretrained=False, resnet_dropout=0.5))
    assert net.n_outputs == 2048
    assert net.dropout.p == 0.5
    net.eval()
    assert net(torch.randn(1, 3, 224, 224)).shape == (1, 2048)
