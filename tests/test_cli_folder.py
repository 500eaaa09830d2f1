"""``prunekit export / report / measure`` on an output folder (prunekit.recipes.command, .folder),
run through ``prunekit.cli.main`` in this process on a tiny file.py:factory model."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from prunekit.cli import main
from prunekit.recipes import load_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, small_net_py):
    tmp = tmp_path_factory.mktemp("cli_folder")
    (tmp / "net.py").write_text(small_net_py)
    (tmp / "r.yaml").write_text("stages:\n  - prune: {ratio: 0.5}\n  - measure: {rounds: 1, repeats: 1, warmup: 0}\n"
                                "  - export: {exporter: legacy}\n")
    out = tmp / "out"
    assert main(["prune", f"{tmp / 'net.py'}:build", "--input-shape", "2,3,8,8", "--recipe", str(tmp / "r.yaml"),
                 "--out", str(out)]) == 0
    return out


def _ort_outputs(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_export_stage_writes_a_checked_onnx_file(folder):
    rec = [s for s in json.loads((folder / "summary.json").read_text())["stages"] if s["stage"] == "export"][0]
    assert rec["exporter"] == "legacy" and rec["max_abs_error"] < 1e-4
    loaded = load_folder(folder)
    np.testing.assert_allclose(_ort_outputs(folder / "model.onnx", loaded.example.args[0]),
                               loaded.outputs["out0"].numpy(), rtol=1e-4, atol=1e-5)


def test_export_command_rewrites_the_onnx_file(folder, capsys):
    (folder / "model.onnx").write_bytes(b"stale")
    assert main(["export", str(folder), "--onnx", "--exporter", "legacy"]) == 0
    out = capsys.readouterr().out
    assert "outputs differ from the saved ones by at most 0.0e+00" in out and "legacy exporter" in out
    loaded = load_folder(folder)
    np.testing.assert_allclose(_ort_outputs(folder / "model.onnx", loaded.example.args[0]),
                               loaded.outputs["out0"].numpy(), rtol=1e-4, atol=1e-5)


def test_report_command_remeasures_and_keeps_the_stages(folder, capsys):
    (folder / "report.html").unlink()
    assert main(["report", str(folder), "--rounds", "1", "--repeats", "1"]) == 0
    page = (folder / "report.html").read_text()
    assert len(re.findall(r'<img src="[^"]+\.png"', page)) >= 2
    summary = json.loads((folder / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["prune", "measure", "export"]
    c = summary["comparison"]
    assert c["after"]["macs"] < c["before"]["macs"] and "paired_latency" in c


def test_measure_command_reads_a_folder(folder, capsys):
    assert main(["measure", str(folder), "--json", "--no-latency"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["params"] == sum(p.numel() for p in load_folder(folder).model.parameters()) and m["latency"] is None


def test_export_needs_onnx_and_a_prunekit_folder(folder, tmp_path, capsys):
    for argv, message in ((["export", str(folder)], "--onnx"),
                          (["export", str(tmp_path), "--onnx"], "is not a prunekit output folder")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_a_tampered_plan_is_refused(folder, tmp_path, capsys):
    """Negative control: an edited plan.json fails its digest; the command says so and exits 1."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    plan = json.loads((bad / "plan.json").read_text())
    first = next(iter(plan["removed"].values()))
    first[next(iter(first))] = first[next(iter(first))][1:]
    (bad / "plan.json").write_text(json.dumps(plan))
    assert main(["export", str(bad), "--onnx", "--exporter", "legacy"]) == 1
    err = capsys.readouterr().err
    assert "digest" in err and "Traceback" not in err
    assert torch.is_tensor(load_folder(folder).outputs["out0"])  # the original folder is untouched
