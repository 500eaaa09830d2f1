"""Per-layer measurements: exact on known sizes, adding up to the whole model, matched before/after."""
from __future__ import annotations

import copy
import json
import os
import struct

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import prunekit
from prunekit.measure import Comparison, count, file_size, measure
from prunekit.measure.layers import measure_layers
from prunekit.measure.size import _unique_state


def _convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10)).eval()


def test_exact_params_macs_and_bytes_per_layer():
    x = torch.randn(2, 3, 8, 8)
    layers = measure_layers(_convnet(), x, latency=False)
    got = {m.path: (m.type, m.shape, m.params, m.macs, m.file_bytes, m.latency_ms) for m in layers}
    assert got == {
        "0": ("Conv2d", (16, 3, 3, 3), 16 * 27 + 16, 2 * 64 * 16 * 27, (16 * 27 + 16) * 4, None),
        # weight, bias, running mean and var (float32) and num_batches_tracked (int64)
        "1": ("BatchNorm2d", (16,), 32, 0, 4 * 16 * 4 + 8, None),
        "3": ("Conv2d", (32, 16, 3, 3), 32 * 16 * 9, 2 * 64 * 32 * 16 * 9, 32 * 16 * 9 * 4, None),
        "7": ("Linear", (10, 32), 330, 2 * 32 * 10, 330 * 4, None),
    }


@pytest.mark.parametrize("name", ["resnet18", "vit_b_16"])
def test_layers_add_up_to_the_model_and_match_flop_counter_mode(name):
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 224, 224) if name == "vit_b_16" else torch.randn(1, 3, 64, 64)
    layers = measure_layers(model, x, latency=False)
    total = count(model, x)
    assert sum(m.params for m in layers) == total.params
    assert sum(m.macs for m in layers) == total.macs
    mode = FlopCounterMode(display=False)
    with mode, torch.no_grad():
        model(x)
    inclusive = mode.get_flop_counts()
    root = type(model).__name__
    leaves = [m for m in layers if not any(True for _ in model.get_submodule(m.path).children())]
    assert leaves
    for m in leaves:  # a leaf's own MACs are all FlopCounterMode credits to it
        assert 2 * m.macs == sum(inclusive.get(f"{root}.{m.path}", {}).values()), m.path
    if name == "vit_b_16":  # attention runs in MultiheadAttention's own forward, not in its out_proj
        attn = next(m for m in layers if m.path == "encoder.layers.encoder_layer_0.self_attention")
        assert attn.type == "MultiheadAttention" and attn.params == 3 * 768 * 768 + 3 * 768  # in_proj only
        tokens = 197  # (B=1, T=197, E=768)
        assert attn.macs == 4 * tokens * 768 * 768 + 2 * tokens * tokens * 768  # q, k, v, out; scores, values


def test_file_bytes_per_layer_sum_to_the_saved_state(tmp_path):
    model = torchvision.models.mobilenet_v3_small().eval()
    path = tmp_path / "m.safetensors"
    save_file(_unique_state(model), str(path))
    header = struct.unpack("<Q", path.read_bytes()[:8])[0]  # safetensors: u64 header length, header, data
    layers = measure_layers(model, torch.randn(1, 3, 32, 32), latency=False)
    assert sum(m.file_bytes for m in layers) == os.path.getsize(path) - 8 - header
    assert os.path.getsize(path) == file_size(model)


def test_tied_weights_count_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 8)
            self.head = nn.Linear(8, 50, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))  # (B, T, 50)

    layers = {m.path: m for m in measure_layers(Tied(), torch.randint(0, 50, (2, 5)), latency=False)}
    assert layers["emb"].params == 400 and layers["emb"].file_bytes == 1600
    assert layers["head"].params == 0 and layers["head"].file_bytes == 0 and layers["head"].macs == 2 * 5 * 8 * 50


def test_layer_latency_is_measured_and_hooks_are_removed():
    model = _convnet()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    layers = measure_layers(model, x, threads=1, warmup=1, repeats=3)
    assert all(m.latency_ms is not None and m.latency_ms > 0 for m in layers)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_per_layer_table_lists_the_pruned_widths_and_removed_layers():
    model = _convnet()
    x = torch.randn(2, 3, 8, 8)
    before = measure(model, x, per_layer=True, threads=1, warmup=1, repeats=3)
    pruned = copy.deepcopy(model)
    prunekit.prune_(pruned, x, ratio=0.5)
    pruned[1] = nn.Identity()  # the BatchNorm is gone (as if folded into the conv)
    after = measure(pruned, x, per_layer=True, threads=1, warmup=1, repeats=3)
    cmp = Comparison(before, after)
    rows = {r[0]: r for r in cmp.layer_rows()}
    header = cmp.layer_header()
    assert header[:6] == ("layer", "type", "shape", "params", "MACs", "file KB") and "ms" in header[6]
    assert rows["0"][2] == "16x3x3x3 -> 8x3x3x3" and rows["0"][3] == "448 -> 224"
    assert rows["3"][2] == "32x16x3x3 -> 16x8x3x3" and rows["3"][4] == "589,824 -> 147,456"
    assert rows["7"][2] == "10x32 -> 10x16"
    assert rows["1"][2] == "16 -> gone" and rows["1"][3] == "32 -> gone"
    text = cmp.layer_table()
    assert "16x3x3x3 -> 8x3x3x3" in text and "gone" in text and text.splitlines()[0].startswith("layer")
    d = json.loads(cmp.to_json())
    by_path = {r["path"]: r for r in d["layers"]}
    assert by_path["1"]["after"] is None and by_path["3"]["after"]["shape"] == [16, 8, 3, 3]
    assert by_path["3"]["before"]["macs"] == 589824 and by_path["3"]["after"]["macs"] == 147456
    assert [m["path"] for m in d["after"]["layers"]] == ["0", "3", "7"]


def test_without_per_layer_numbers_there_is_no_layer_table():
    x = torch.randn(2, 3, 8, 8)
    b = measure(_convnet(), x, latency=False)
    cmp = Comparison(b, b)
    assert b.layers is None and cmp.layer_rows() == [] and cmp.layer_table() == ""
    assert "layers" not in json.loads(cmp.to_json())
    timed_off = measure(_convnet(), x, latency=False, per_layer=True)
    assert all(m.latency_ms is None for m in timed_off.layers)
    assert Comparison(timed_off, timed_off).layer_header()[-1] == "file KB"
