"""ONNX export of pruned models: checked against PyTorch, atomic, and measurable through ONNX Runtime."""
from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torch import nn

import prunekit
from prunekit.errors import PrunekitError
from prunekit.io import OnnxRuntimeModule, export_onnx
from prunekit.measure.latency import measure_latency

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name, exporter", [("resnet18", "dynamo"), ("mobilenet_v2", "legacy")])
def test_pruned_model_exports_and_runs_with_the_same_outputs(tmp_path, name, exporter):
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    prunekit.prune_(model, x, ratio=0.4, round_to=8)
    model.train()  # exported in eval mode, then left as it was
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(model, x, path, exporter=exporter)
    assert model.training and report.exporter == exporter
    assert report.bytes == os.path.getsize(path) > 0
    assert report.max_abs_error is not None and report.max_abs_error < 1e-3
    ort_model = OnnxRuntimeModule(path, threads=1)
    x4 = torch.randn(4, 3, 64, 64)  # dynamic batch
    with torch.no_grad():
        want = model.eval()(x4)
    torch.testing.assert_close(ort_model(x4), want, rtol=1e-3, atol=1e-4 * want.abs().max().item())
    # the pruned file is smaller than the unpruned one: the saving is on disk too
    full = tmp_path / "full.onnx"
    export_onnx(torchvision.models.get_model(name).eval(), x, full, check=False, exporter="legacy")
    assert report.bytes < 0.8 * os.path.getsize(full)


class _Noisy(nn.Module):
    """Output depends on a random draw: ONNX Runtime cannot reproduce PyTorch's numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) + torch.rand_like(x)


def test_mismatch_raises_and_leaves_the_existing_file_untouched(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(PrunekitError, match="differs from PyTorch"):
        export_onnx(_Noisy(), torch.randn(2, 8), path)
    assert path.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left


def test_failed_export_leaves_no_file(tmp_path):
    class Untraceable(nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy() * 2)  # leaves torch: the exporter cannot follow it

    path = tmp_path / "bad.onnx"
    # the legacy tracer loses the input at .numpy() (a constant graph): refused, nothing written
    with pytest.raises(PrunekitError, match="second random input|dropped inputs"):
        export_onnx(Untraceable(), torch.randn(2, 3), path, exporter="legacy")
    assert list(tmp_path.iterdir()) == []
    class Baked(nn.Module):  # float(...) becomes a constant in the legacy trace: right on the example only
        def forward(self, x):
            return x * float(x.abs().sum())

    with pytest.raises(PrunekitError, match="second random input"):
        export_onnx(Baked(), torch.randn(2, 3), path, exporter="legacy")
    assert list(tmp_path.iterdir()) == []
    # torch.export follows numpy code: the export is right, on other inputs too
    export_onnx(Untraceable(), torch.randn(2, 3), path)
    x = torch.randn(5, 3)
    torch.testing.assert_close(OnnxRuntimeModule(path, threads=1)(x), x * 2)


def test_inputs_must_be_tensors_and_match_the_session(tmp_path):
    with pytest.raises(PrunekitError, match="takes tensors"):
        export_onnx(nn.Linear(3, 2), [[1.0, 2.0, 3.0]], tmp_path / "x.onnx")

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 5)

        def forward(self, x, y):
            return self.a(x), self.b(y)

    x, y = torch.randn(2, 3), torch.randn(2, 3)
    report = export_onnx(Two(), (x, y), tmp_path / "two.onnx", input_names=["x", "y"], exporter="legacy")
    assert report.input_names == ("x", "y") and report.output_names == ("output_0", "output_1")
    m = OnnxRuntimeModule(tmp_path / "two.onnx", threads=1)
    a, b = m(x, y)
    assert a.shape == (2, 2) and b.shape == (2, 5)
    with pytest.raises(PrunekitError, match=r"takes inputs \['x', 'y'\], got 1 positional"):
        m(x)


def test_onnx_runtime_module_is_measured_like_any_model(tmp_path):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    export_onnx(model, torch.randn(1, 16), tmp_path / "mlp.onnx", exporter="legacy")
    lat = measure_latency(OnnxRuntimeModule(tmp_path / "mlp.onnx", threads=1), torch.randn(8, 16),
                          threads=1, warmup=1, repeats=5)
    assert lat.repeats == 5 and lat.batch_size == 8 and 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms


def test_sessions_without_spinning_threads_give_the_same_outputs(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)).eval()
    x = torch.randn(2, 3, 12, 12)
    model(x)  # materialize the lazy layer
    export_onnx(model, x, tmp_path / "m.onnx", exporter="legacy")
    spin, calm = OnnxRuntimeModule(tmp_path / "m.onnx"), OnnxRuntimeModule(tmp_path / "m.onnx", spinning=False)
    torch.testing.assert_close(calm(x), spin(x))
    torch.testing.assert_close(calm(x), model(x).detach(), rtol=1e-4, atol=1e-5)


def test_keyword_inputs_and_a_reported_fallback(tmp_path):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x, scale=None):
            return self.fc(x) * scale

    x, scale = torch.randn(2, 3), torch.rand(2, 4) + 0.5
    model = Scaled().eval()
    report = export_onnx(model, x, tmp_path / "kw.onnx", example_kwargs={"scale": scale})
    assert report.exporter == "dynamo" and "scale" in report.input_names
    ort_model = OnnxRuntimeModule(tmp_path / "kw.onnx", threads=1)
    with torch.no_grad():
        torch.testing.assert_close(ort_model(x, scale=scale), model(x, scale=scale))

    class Branchy(nn.Module):  # data-dependent control flow: torch.export refuses, the legacy tracer does not
        def forward(self, x):
            return x * 2 if x.shape[0] > 1 and bool(x.sum() > -1e9) else x

    with pytest.warns(UserWarning, match="used the legacy TorchScript exporter"):
        report = export_onnx(Branchy(), torch.randn(2, 3), tmp_path / "b.onnx")
    assert report.exporter.startswith("legacy (dynamo failed")


def test_torch_export_of_a_pruned_model():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    prunekit.prune_(model, x, ratio=0.5)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))
