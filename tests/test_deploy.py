"""Deployment form: batch norm folded into the layer that feeds it, channels-last, same outputs."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import prunekit
from prunekit.deploy import fold_batchnorm_, optimize_for_inference_


def _randomize_bn(model: nn.Module) -> None:
    """Untrained BN is the identity; give it statistics so folding has something to get wrong."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.num_features, generator=g))
                m.bias.data.copy_(torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("name, folded", [("resnet18", 20), ("mobilenet_v2", 52)])
def test_pruned_torchvision_model_folds_every_bn_with_the_same_outputs(name, folded):
    model = torchvision.models.get_model(name).eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 64, 64)
    prunekit.prune_(model, x, ratio=0.3)
    ref = model(x)
    report = fold_batchnorm_(model, x)
    assert len(report.folded) == folded and not report.kept
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


class _Shared(nn.Module):
    """conv1's output feeds bn1 and the residual; bn2 follows a ReLU; conv3 has no bias and an affine-free BN."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8, affine=False)
        self.fc, self.bn4 = nn.Linear(8, 5), nn.BatchNorm1d(5)

    def forward(self, x):
        y = self.conv1(x)
        z = self.bn1(y) + y
        z = self.bn3(self.conv3(self.bn2(torch.relu(z))))
        return self.bn4(self.fc(z.mean((2, 3))))


def test_only_bns_fed_by_a_layer_alone_are_folded():
    model = _Shared().eval()
    _randomize_bn(model)
    x = torch.randn(4, 3, 8, 8)
    ref = model(x)
    report = fold_batchnorm_(model, x)
    assert sorted(report.folded) == [("conv3", "bn3"), ("fc", "bn4")]
    assert dict(report.kept) == {"bn1": "conv1's output is also read elsewhere",
                                 "bn2": "its input is not a conv/linear output"}
    assert isinstance(model.bn3, nn.Identity) and isinstance(model.bn1, nn.BatchNorm2d)
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_a_failed_fold_restores_the_model(monkeypatch):
    model = torchvision.models.resnet18().eval()
    _randomize_bn(model)
    x = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr("prunekit.deploy._same", lambda a, b, rtol: False)
    with pytest.raises(prunekit.PrunekitError, match="changed the model's outputs"):
        fold_batchnorm_(model, x)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.bn1, nn.BatchNorm2d) and model.conv1.bias is None


def test_optimize_for_inference_is_channels_last_and_exact():
    model = torchvision.models.resnet18().eval()
    _randomize_bn(model)
    x = torch.randn(1, 3, 64, 64)
    ref = model(x)
    report = optimize_for_inference_(model, x)
    assert len(report.folded) == 20
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
