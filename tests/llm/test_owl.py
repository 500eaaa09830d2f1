"""OWL layer ratios: mean equals the target, more outliers means less sparsity, validation."""
from __future__ import annotations

import pytest
import torch

from prunekit.llm.owl import OwlConfig, layer_sparsities, outlier_ratio, owl_sparsities
from prunekit.llm.tiny import tiny_model


def test_ratios_average_to_target_and_order():
    ratios = [0.01, 0.05, 0.02, 0.08, 0.03]
    s = layer_sparsities(ratios, 0.6, OwlConfig(lamda=0.08))
    assert abs(sum(s) / len(s) - 0.6) < 1e-12
    assert max(s) - min(s) == pytest.approx(0.16)
    assert sorted(range(5), key=lambda i: ratios[i]) == sorted(range(5), key=lambda i: -s[i])
    assert layer_sparsities([0.02] * 3, 0.5, OwlConfig()) == [0.5] * 3  # no spread: uniform


def test_outlier_ratio_counts_above_m_times_mean():
    scores = [torch.tensor([1.0] * 98 + [100.0, 100.0])]  # mean 2.98: two entries above 5x
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.02)
    assert outlier_ratio([torch.ones(10)], 5.0) == 0.0  # negative control: no outliers


def test_owl_on_tiny_model_does_not_change_it():
    model = tiny_model("llama", num_hidden_layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    s = owl_sparsities(model, ids, 0.5, OwlConfig(lamda=0.05), progress=False)
    assert len(s) == 3 and abs(sum(s) / 3 - 0.5) < 1e-9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, field", [(dict(m=0), "m"), (dict(m=float("nan")), "m"), (dict(lamda=0.9), "lamda"),
                                           (dict(lamda="x"), "lamda")])
def test_bad_owl_settings(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field):
        OwlConfig(**kwargs)


def test_lamda_too_large_for_target():
    with pytest.raises(ValueError, match="lamda"):
        layer_sparsities([0.0, 1.0], 0.95, OwlConfig(lamda=0.2))
