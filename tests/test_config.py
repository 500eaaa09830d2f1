"""PruneConfig validates itself and round-trips through JSON."""
from __future__ import annotations

import pytest

from prunekit import PruneConfig


def test_json_round_trip():
    cfg = PruneConfig(ratio=0.3, ratios={"layer4.*": 0.6}, round_to=8, ignore=("fc",), kinds=("channel",))
    again = PruneConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.ratios == (("layer4.*", 0.6),)


@pytest.mark.parametrize("bad", [dict(ratio=1.0), dict(ratio=-0.1), dict(round_to=0), dict(max_ratio=1.0),
                                 dict(kinds=("neurons",)), dict(ratios={"x": 2.0})])
def test_invalid_values_rejected(bad):
    with pytest.raises(ValueError):
        PruneConfig(**bad)


def test_unknown_field_rejected():
    with pytest.raises(ValueError, match="unknown"):
        PruneConfig.from_dict({"ratio": 0.5, "ratoi": 0.1})
