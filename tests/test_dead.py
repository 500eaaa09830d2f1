"""Structural activation mode: dead and disconnected units go, outputs do not change."""
import torch
from torch import nn

from prunekit.dead import remove_dead_units_


def _net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        m[1].bias[[2, 5, 7]] = -1e4  # channels 2, 5, 7 never pass the first ReLU
        m[3].bias[[0, 9]] = -1e4  # channels 0 and 9 of the second conv are dead too
        m[7].weight[:, 4] = 0  # channel 4 of the second conv is read by nobody
    return m.eval()


def test_dead_and_disconnected_units_are_removed_exactly():
    m = _net()
    data = [torch.randn(8, 3, 12, 12) for _ in range(3)]
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        ref = m(x)
    r = remove_dead_units_(m, data[0][:1], data)
    assert (r.dead, r.disconnected, r.rejected) == (5, 1, 0)
    assert m[0].out_channels == 13 and m[3].out_channels == 13 and m[7].in_features == 13
    assert r.max_abs_diff <= 1e-5
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)  # unseen data too: they are structurally dead
    assert r.after.params < r.before.params


def test_nothing_dead_nothing_removed():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        m[0].bias.fill_(10.0)  # every unit is active on these inputs
    r = remove_dead_units_(m, torch.randn(1, 4), [torch.randn(64, 4)])
    assert r.dead == 0 and r.disconnected == 0 and r.plan.is_empty()
    assert m[0].out_features == 8
