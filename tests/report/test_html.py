import json

import torch
from torch import nn

from prunekit.measure import Comparison, measure
from prunekit.measure.sensitivity import GroupCurve, Sensitivity
from prunekit.report import layer_widths, write_report


def test_report_writes_html_pngs_and_json(tmp_path):
    big = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    small = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(8, 32)
    cmp = Comparison(measure(big, x, repeats=3, warmup=1), measure(small, x, repeats=3, warmup=1))
    sens = Sensitivity(0.9, 1000, 500, [GroupCurve(0, "0.weight:0", 64, [0.5], [0.8], [400], [200])])
    page = write_report(tmp_path / "r", "test run", comparison=cmp, sensitivity=sens,
                        widths=(layer_widths(big), layer_widths(small)),
                        cycles=[{"step": 0, "macs": 2e6, "accuracy": 0.9}, {"step": 1, "macs": 1e6, "accuracy": 0.85}])
    text = page.read_text()
    for png in ("latency.png", "widths.png", "sensitivity.png", "cycles.png"):
        assert f'src="{png}"' in text
        assert (tmp_path / "r" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["comparison"]["after"]["params"] == 32 * 16 + 16 + 16 * 4 + 4
    assert summary["widths"]["before"] == {"0": 64, "2": 4} and summary["widths"]["after"] == {"0": 16, "2": 4}
