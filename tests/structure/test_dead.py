"""Structural activation mode: dead and disconnected units go, outputs do not change."""
import copy

import torch
from torch import nn

from prunekit.structure.dead import remove_dead_units_


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
    assert (r.dead, r.disconnected, r.rejected, r.constant) == (5, 1, 0, 0)
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


def test_constant_units_are_folded_into_the_next_bias():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3)).eval()
    with torch.no_grad():
        m[0].bias.fill_(5.0)
        m[2].bias.fill_(5.0)  # every other unit active
        m[0].weight[[1, 4]] = 0
        m[0].bias[[1, 4]] = torch.tensor([0.7, 2.0])  # relu output is always 0.7 / 2.0
        m[2].weight[6] = 0
        m[2].bias[6] = -1.0  # dead
    original = copy.deepcopy(m)
    x = torch.randn(32, 6)
    r = remove_dead_units_(m, x[:1], [x])
    assert (r.constant, r.dead, r.constant_kept, r.rejected) == (2, 1, 0, 0)
    assert m[0].out_features == 8 and m[2].out_features == 9
    unseen = torch.randn(50, 6)
    with torch.no_grad():
        torch.testing.assert_close(m(unseen), original(unseen), rtol=1e-5, atol=1e-5)


def test_constant_units_without_a_bias_to_fold_into_are_kept():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2, bias=False)).eval()
    with torch.no_grad():
        m[0].weight[2] = 0
        m[0].bias[2] = 1.5
    r = remove_dead_units_(m, torch.randn(1, 4), [torch.randn(16, 4)])
    assert r.constant == 0 and r.constant_kept == 1 and m[0].out_features == 6
