"""recalibrate_bn: statistics re-estimated from the data alone, nothing else touched, restored on failure."""
import pytest
import torch
from torch import nn

from prunekit.recovery import recalibrate_bn


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.5), nn.ReLU(), nn.Flatten(),
                         nn.LazyLinear(4))


def test_statistics_are_the_data_statistics_and_the_rest_is_untouched():
    net = _net()
    data = [(torch.randn(16, 3, 6, 6) * 3 + 1, torch.zeros(16)) for _ in range(4)]
    net(data[0][0])  # materialize the lazy layer
    net.eval()
    net[2].train()  # a module in its own mode stays in it
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "batches" not in k}
    assert recalibrate_bn(net, data) == 1
    with torch.no_grad():
        feats = torch.cat([net[0](x) for x, _ in data])  # (64, 8, 4, 4)
    torch.testing.assert_close(net[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    # cumulative average of per-batch unbiased variances
    per_batch = torch.stack([net[0](x).detach().transpose(0, 1).flatten(1).var(1) for x, _ in data])
    torch.testing.assert_close(net[1].running_var, per_batch.mean(0), rtol=1e-4, atol=1e-5)
    assert net[1].momentum == 0.1 and not net.training and not net[1].training and net[2].training
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items() if k in weights)


def test_failure_restores_the_statistics():
    net = _net()
    net(torch.randn(2, 3, 6, 6))
    net[1].running_mean.fill_(0.5)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(net, [])
    assert torch.all(net[1].running_mean == 0.5)
    with pytest.raises(RuntimeError):
        recalibrate_bn(net, [torch.randn(2, 5, 6, 6)])  # wrong channel count: the forward fails
    assert torch.all(net[1].running_mean == 0.5)
    assert recalibrate_bn(nn.Linear(3, 3), [torch.randn(2, 3)]) == 0
