"""Each torch internal prunekit relies on (``prunekit.compat``) still exists and behaves as used."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit import compat
from prunekit.measure.counting import MacCounter

aten = torch.ops.aten


def test_dispatch_modes_lists_the_active_modes():
    assert not any(isinstance(m, MacCounter) for m in compat.dispatch_modes())  # negative control: none entered
    with MacCounter() as counter:
        assert counter in compat.dispatch_modes()
        torch.randn(2, 3) @ torch.randn(3, 4)
    assert counter.flops == 2 * 2 * 3 * 4
    assert issubclass(MacCounter, compat.TorchDispatchMode)


def test_an_op_overloads_packet_is_the_flop_registrys_key():
    assert compat.overload_packet(aten.mm.default) is aten.mm
    assert aten.mm in compat.flop_registry and aten.convolution in compat.flop_registry
    assert compat.overload_packet(aten.mm.default) is not aten.add  # negative control


@pytest.mark.parametrize("name", ["_cudnn_rnn", "_native_multi_head_attention",
                                  "_scaled_dot_product_flash_attention_for_cpu", "mkldnn_rnn_layer"])
def test_the_private_kernels_counted_by_name_exist(name):
    op = compat.aten_op(name)
    assert isinstance(op, torch._ops.OpOverloadPacket) and op.__name__ == name


def test_an_unknown_kernel_name_fails_loudly():  # negative control for aten_op
    with pytest.raises(AttributeError):
        compat.aten_op("no_such_kernel_anywhere")


def test_registry_formulas_are_shape_wrapped_and_take_shapes():
    rule = compat.flop_registry[aten.mm]
    assert rule.__code__ is compat.SHAPE_WRAPPED and hasattr(rule, "__wrapped__")
    assert rule.__wrapped__((2, 3), (3, 4), out_shape=(2, 4)) == 2 * 2 * 3 * 4
    assert rule(torch.empty(2, 3), torch.empty(3, 4), out_val=torch.empty(2, 4)) == 48
    assert (lambda: None).__code__ is not compat.SHAPE_WRAPPED  # negative control


def test_sdpa_flop_count_is_two_batched_matmuls():
    b, h, tq, tk, d = 2, 4, 5, 7, 8  # (B, heads, T, head dim)
    assert compat.sdpa_flop_count((b, h, tq, d), (b, h, tk, d), (b, h, tk, d)) == 2 * (2 * b * h * tq * tk * d)


def test_tree_map_keeps_the_structure():
    seen = []

    def shape(t):  # called on every leaf, tensors and others
        seen.append(type(t).__name__)
        return t.shape if isinstance(t, torch.Tensor) else t

    out = compat.tree_map(shape, (torch.zeros(1), {"a": [torch.zeros(2, 3)]}, 3))
    assert out == (torch.Size([1]), {"a": [torch.Size([2, 3])]}, 3)
    assert sorted(seen) == ["Tensor", "Tensor", "int"]


def test_a_modules_call_runs_in_the_frame_named_module_call_frame():
    seen = {}

    class Probe(nn.Module):
        def forward(self, x, hx=None):
            f = sys._getframe(1)
            seen.update(name=f.f_code.co_name, self=f.f_locals.get("self"), args=f.f_locals.get("args"),
                        kwargs=f.f_locals.get("kwargs"))
            return x

    probe, x = Probe(), torch.zeros(1)
    probe(x, hx=5)
    assert seen["name"] == compat.MODULE_CALL_FRAME and seen["self"] is probe
    assert seen["args"][0] is x and seen["kwargs"] == {"hx": 5}
    probe.forward(x)  # negative control: a direct forward call has no such frame
    assert seen["name"] != compat.MODULE_CALL_FRAME


def test_conv_transpose_is_the_base_of_transposed_convolutions_only():
    assert all(issubclass(c, compat.CONV_TRANSPOSE) for c in (nn.ConvTranspose1d, nn.ConvTranspose2d,
                                                                 nn.ConvTranspose3d))
    assert not issubclass(nn.Conv2d, compat.CONV_TRANSPOSE)  # negative control
    assert nn.ConvTranspose2d(4, 6, 3, groups=2).weight.shape == (4, 3, 3, 3)  # (in, out / groups, k, k)


def test_conv_and_batch_norm_bases_cover_their_families():
    assert all(issubclass(c, compat.CONV) for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d))
    assert all(issubclass(c, compat.BATCH_NORM) for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm))
    assert not issubclass(nn.Linear, compat.CONV) and not issubclass(nn.LayerNorm, compat.BATCH_NORM)  # controls


def test_module_slots_swap_tensors_in_place():
    m = nn.Sequential(nn.Linear(2, 3))
    params, buffers, children = compat.module_slots(m[0])
    assert params["weight"] is m[0].weight and buffers == {} and children == {}
    assert compat.module_slots(m)[2]["0"] is m[0]
    stand_in = torch.empty(3, 2, device="meta")  # a plain tensor, not a Parameter: no registration check
    params["weight"] = stand_in
    assert m[0].weight is stand_in
    with pytest.raises(TypeError):  # negative control: attribute assignment does check
        m[0].weight = torch.empty(3, 2)


def test_refreshing_rnn_flat_weights_repoints_them():
    lstm = nn.LSTM(3, 4)
    params = compat.module_slots(lstm)[0]
    new = nn.Parameter(torch.zeros_like(lstm.weight_ih_l0))
    params["weight_ih_l0"] = new
    assert lstm._flat_weights[0] is not new  # the cached list still holds the old parameter
    compat.refresh_rnn_flat_weights(lstm)
    assert lstm._flat_weights[0] is new


def test_profiler_noise_is_held_back_and_other_lines_pass(capfd):
    import os

    with compat.quiet_profiler_stderr():
        os.write(2, b"USDT:2026 x SyncActivityProfilerHandler.cpp:39] profiler_start\nreal problem\n")
    err = capfd.readouterr().err
    assert "USDT" not in err and "profiler_start" not in err
    assert "real problem" in err  # negative control: an ordinary line is not swallowed


# torch internals by how they are written; prunekit.compat is the one place that may spell them
INTERNALS = re.compile(r"torch\.utils\._\w+|torch\._C\b|_get_current_dispatch_mode_stack|\._overloadpacket\b"
                       r"|\._init_flat_weights\b|[\"']_call_impl[\"']|\b_ConvTransposeNd\b|\b_ConvNd\b|\b_BatchNorm\b"
                       r"|\w\._(parameters|buffers|modules)\b|os\.dup2\(")
SRC = Path(compat.__file__).parent
# files allowed to spell torch internals outside compat.py (none left)
PENDING: set[str] = set()  # every room uses compat now (llm/ is not scanned)


def test_torch_internals_are_spelled_only_in_compat():
    assert INTERNALS.search("from torch.utils._pytree import tree_map")  # negative control: recognised
    assert INTERNALS.search("for slots in (mod._parameters, mod._buffers):")
    assert not INTERNALS.search("self._parameters_seen = 0")
    found = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
             if p.relative_to(SRC).parts[0] != "llm" and p.name != "compat.py" and INTERNALS.search(p.read_text())}
    assert sorted(found - PENDING) == []
    assert not any(f.startswith(("graph/", "measure/")) for f in found)
