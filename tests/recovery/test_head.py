import pytest
import torch
from torch import nn

from prunekit.recovery import extract_features, fit_linear_head, head_accuracy


def test_linear_head_separates_separable_features():
    torch.manual_seed(0)
    centers = torch.randn(3, 5) * 4
    labels = torch.randint(0, 3, (300,))
    feats = centers[labels] + 0.3 * torch.randn(300, 5) + 100.0  # offset: standardization must cope
    head = fit_linear_head(nn.Linear(5, 3), feats, labels)
    assert head_accuracy(head, feats, labels) == 1.0


def test_features_are_computed_in_eval_mode_and_sizes_checked():
    body = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.9)).train()
    x = [torch.randn(8, 4), torch.randn(2, 4)]
    f = extract_features(body, x)
    assert f.shape == (10, 6) and body.training
    torch.testing.assert_close(f, extract_features(body, x))  # no dropout noise
    with pytest.raises(ValueError, match="features"):
        fit_linear_head(nn.Linear(5, 2), f, torch.zeros(10, dtype=torch.long))
