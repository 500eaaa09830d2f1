import json

import torch
from torch import nn

from prunekit.measure import Comparison, measure
from prunekit.decide.curves import GroupCurve, Sensitivity
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


def test_report_includes_the_per_layer_table_when_measured(tmp_path):
    big = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    small = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(8, 32)
    cmp = Comparison(measure(big, x, repeats=3, warmup=1, per_layer=True),
                     measure(small, x, repeats=3, warmup=1, per_layer=True))
    text = write_report(tmp_path / "r", "per layer", comparison=cmp).read_text()
    assert "<h2>Per layer</h2>" in text
    assert "<td>64x32 -&gt; 16x32</td>" in text and "<td>4x64 -&gt; 4x16</td>" in text
    assert "<td>2,112 -&gt; 528</td>" in text  # params of layer 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    layers = {r["path"]: r for r in summary["comparison"]["layers"]}
    assert layers["0"]["after"]["shape"] == [16, 32] and layers["2"]["before"]["macs"] == 8 * 64 * 4
    plain = write_report(tmp_path / "p", "whole model", comparison=Comparison(
        measure(big, x, latency=False), measure(small, x, latency=False))).read_text()
    assert "Per layer" not in plain


def test_a_failed_report_write_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    """A full disk while writing summary.json (simulated) leaves the old report and summary as they were,
    no staging folder behind, and the user's other files in the folder untouched."""
    import prunekit.report.html as report_html

    folder = tmp_path / "r"
    write_report(folder, "first", extra={"run": 1})
    (folder / "weights.bin").write_bytes(b"keep")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_html.json, "dumps", full_disk)
    import pytest
    with pytest.raises(OSError, match="No space"):
        write_report(folder, "second", extra={"run": 2})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    monkeypatch.undo()
    write_report(folder, "second", extra={"run": 2})
    assert json.loads((folder / "summary.json").read_text())["run"] == 2
    assert (folder / "weights.bin").read_bytes() == b"keep"


def test_report_keeps_file_modes_and_refuses_a_file_as_folder(tmp_path):
    import os

    import pytest

    folder = tmp_path / "r"
    write_report(folder, "first")
    os.chmod(folder / "summary.json", 0o644)
    os.chmod(folder / "report.html", 0o600)
    write_report(folder, "second")
    assert os.stat(folder / "summary.json").st_mode & 0o777 == 0o644
    assert os.stat(folder / "report.html").st_mode & 0o777 == 0o600
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_report(tmp_path / "file", "third")
    assert (tmp_path / "file").read_text() == "x"
