"""The demo measures latency paired (alternating rounds), in PyTorch and ONNX Runtime."""
import json

import pytest
import torch
from torch import nn

from prunekit.measure import Comparison, measure
from prunekit.zoo.demo import DemoConfig, _paired_latency


def test_paired_latency_rows_replace_the_unpaired_row(tmp_path):
    pytest.importorskip("onnxruntime")
    big = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 64, 3, padding=1))
    x = torch.randn(1, 3, 32, 32)
    paired = _paired_latency(big, small, x, DemoConfig(latency_repeats=4, latency_rounds=3), 0.0)
    assert set(paired) == {"PyTorch", "ONNX Runtime"}
    for p in paired.values():
        assert len(p.base_ms) == len(p.other_ms) == 3 and p.config.threads == 1
        assert p.ratio < 1.0  # 8x fewer channels in both convs: faster in alternating rounds
    cmp = Comparison(measure(big, x, repeats=2, warmup=1), measure(small, x, repeats=2, warmup=1), paired=paired)
    rows = [r[0] for r in cmp.rows()]
    assert sum("paired" in r for r in rows) == 2 and not any(r.startswith("latency ms (batch") for r in rows)
    assert set(json.loads(cmp.to_json())["paired_latency"]) == {"PyTorch", "ONNX Runtime"}
    from prunekit.report import write_report

    page = write_report(tmp_path / "r", "paired", comparison=cmp)
    assert 'src="latency.png"' in page.read_text()
    # negative control: without pairing the table keeps the single unpaired latency row
    plain = Comparison(cmp.before, cmp.after)
    assert sum(r[0].startswith("latency ms (batch") for r in plain.rows()) == 1
