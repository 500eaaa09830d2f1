"""Patterns the zoo benchmark (benchmarks/results/zoo_vs_torch_pruning.md) found the graph rules
getting wrong, each as a small hand-written module and as the real timm model (random init, small
inputs): ``prunekit.prune_`` must succeed and verify the model it returns, and where a dim has to be
kept, ``graph.blocked()`` must say which op and module kept it."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunekit

timm = pytest.importorskip("timm")

C = 16  # module-level constant, read by LayerScaleGlobal.forward


def _prune(model: nn.Module, x: torch.Tensor, keep=("head",)) -> prunekit.PruneResult:
    result = prunekit.prune_(model, x, ratio=0.5, keep_outputs=tuple(keep))
    assert not result.plan.is_empty(), result.summary()
    assert result.verified, "the returned model was not verified"
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    return result


def _timm(name: str, side: int, **kwargs) -> tuple[nn.Module, torch.Tensor, list[str]]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    heads = model.get_classifier()
    paths = {id(m): p for p, m in model.named_modules()}
    return model, torch.randn(1, 3, side, side), [paths[id(h)] for h in (heads if isinstance(heads, tuple) else (heads,))]


def _blocked(model: nn.Module, x: torch.Tensor) -> list:
    return prunekit.trace(model, (x,)).blocked()


# -- 1. a layer scale reshaped with a module-level constant: ``scale.view(C, 1, 1)`` -----------------

class _LayerScaleBase(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(C, 2 * C, 1), nn.ReLU(), nn.Conv2d(2 * C, C, 1))
        self.scale = nn.Parameter(torch.rand(C) + 0.5)
        self.head = nn.Linear(C, 5)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x):
        x = self.stem(x)
        x = x + self._scale(x) * self.branch(x)
        return self.head(x.mean((2, 3)))


class LayerScaleGlobal(_LayerScaleBase):
    def _scale(self, x):
        return self.scale.view(C, 1, 1)  # (C,) -> (C, 1, 1), C a module-level int


class LayerScaleLocal(_LayerScaleBase):
    def _scale(self, x):
        c = x.shape[1]
        return self.scale.view(c, 1, 1)  # (C,) -> (C, 1, 1), c read from the tensor: follows a pruned dim


def test_a_global_int_is_a_size_written_in_the_code():
    import ast
    import sys

    from prunekit.graph.rules.callsite import _constant

    n = C  # a local: may have been read from a tensor's shape
    frame = sys._getframe()

    def const(src: str) -> bool:
        return _constant(ast.parse(src, mode="eval").body, frame)

    assert const("16") and const("C") and const("-C") and const("2 * C // 2") and n == C
    assert not const("n") and not const("2 * n") and not const("self.dim")  # negative controls
    assert not const("math")  # a global that is not an int


def test_layer_scale_viewed_with_a_global_constant_keeps_the_dim_and_says_why():
    torch.manual_seed(0)
    model, x = LayerScaleGlobal().eval(), torch.randn(2, 3, 8, 8)
    kept = [b for b in _blocked(model, x) if b.tensor == "scale"]
    assert kept and kept[0].op == "view" and "16 written in the code" in kept[0].reason, kept
    result = _prune(model, x)
    assert model.scale.shape == (C,)
    assert result.verified["checked"] == "exact" and result.verified["error"] <= 1e-5
    assert result.macs_ratio < 0.75  # the branch's hidden width is still pruned


def test_layer_scale_viewed_with_a_size_read_from_the_tensor_is_pruned():
    """Negative control: the same view with the size read from the activation follows the pruned dim."""
    torch.manual_seed(0)
    model, x = LayerScaleLocal().eval(), torch.randn(2, 3, 8, 8)
    assert not [b for b in _blocked(model, x) if b.tensor == "scale"]
    _prune(model, x)
    assert model.scale.shape == (C // 2,)


def test_zoo_custom_layer_scale():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "zoo" / "custom_zoo.py"
    if not path.exists():
        pytest.skip("benchmarks/zoo not present")
    import sys

    sys.path.insert(0, str(path.parents[1]))
    try:
        from zoo.custom_zoo import _BUILDERS
    finally:
        sys.path.remove(str(path.parents[1]))
    built = _BUILDERS["custom_layer_scale"]()
    result = _prune(built.model, built.inputs[0], built.heads)
    assert result.verified["checked"] == "exact"


# -- 2. a weight standardized per output channel (NFNet's ScaledStdConv2d) ---------------------------

class StdConv(nn.Module):
    """``F.batch_norm(weight.reshape(1, out, -1))``: statistics over (in, kh, kw), one per output channel."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.out_channels = cout
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)
        self.bias = nn.Parameter(torch.randn(cout))

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,  # (O, I, k, k) -> (1, O, I*k*k)
                         weight=self.gain.view(-1), training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, padding=1)


class StdConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.head = StdConv(3, 16), StdConv(16, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


def test_standardized_weight_prunes_its_output_channels():
    torch.manual_seed(0)
    model, x = StdConvNet().eval(), torch.randn(2, 3, 8, 8)
    graph = prunekit.trace(model, (x,))
    gs = graph.groups()
    assert len(gs) == 2
    # c2's output channels meet only the head's input: exact; c1's also meet c2's standardization
    # over its input channels (the statistics change when one is removed): approximate
    assert sorted((len(g), g.exact) for g in gs) == [(8, True), (16, False)]
    _prune(model, x)
    assert model.c1.weight.shape == (8, 3, 3, 3) and model.c2.weight.shape == (4, 8, 3, 3)
    assert model.c1.out_channels == 8 and model.c2.gain.shape == (4, 1, 1, 1)


def test_exact_standardized_output_channel_matches_zeroing():
    """Removing an output channel of a standardized conv is exact (only c2's group is pruned)."""
    torch.manual_seed(0)
    model, x = StdConvNet().eval(), torch.randn(2, 3, 8, 8)
    result = prunekit.prune_(model, x, ratio=0.5, keep_outputs=("head",), ignore=("c1",))
    assert result.verified["checked"] == "exact" and result.verified["error"] <= 1e-5
    assert model.c2.weight.shape == (4, 16, 3, 3)


def test_nf_resnet26_prunes():
    model, x, heads = _timm("nf_resnet26", 32)
    result = _prune(model, x, heads)
    assert result.macs_ratio < 0.35  # 0.265 measured; 1.0 (nothing pruned) before


# -- 3. ``y.expand_as(x)`` in SE/ECA attention -----------------------------------------------------

class Eca(nn.Module):
    """timm's EcaModule: a conv1d *across channels* (it mixes neighbours: the channels are kept)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))  # (B, C) -> (B, 1, C)
        return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1).expand_as(x)  # (B, 1, C) -> (B, C, 1, 1)


class Se(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True))).expand_as(x)


class GatedNet(nn.Module):
    def __init__(self, gate: str):
        super().__init__()
        self.stem, self.conv, self.head = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3), nn.Linear(16, 4)
        self.gate = Eca() if gate == "eca" else Se(16)

    def forward(self, x):
        x = self.gate(F.relu(self.stem(x)))
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


def test_expand_as_of_an_unlabelled_gate_keeps_the_channels_it_mixes():
    torch.manual_seed(0)
    model, x = GatedNet("eca").eval(), torch.randn(2, 3, 10, 10)
    kept = [b for b in _blocked(model, x) if b.tensor == "stem.weight" and b.dim == 0]
    assert kept and kept[0].module.startswith("gate"), kept
    result = _prune(model, x)
    assert not result.unsupported, result.unsupported  # no rule crashed
    assert model.stem.out_channels == 16 and model.conv.out_channels == 8


def test_expand_as_of_an_se_gate_prunes_through():
    """Control: the SE gate's channels come from a 1x1 conv, so they follow the pruned channels."""
    torch.manual_seed(0)
    model, x = GatedNet("se").eval(), torch.randn(2, 3, 10, 10)
    result = _prune(model, x)
    assert not result.unsupported
    assert model.stem.out_channels == 8 and model.gate.fc.out_channels == 8


def test_expand_as_does_not_lend_labels_to_a_full_size_unlabelled_dim():
    """A constant per-channel tensor expanded to x keeps x's channels (it cannot be sliced)."""

    class ConstGate(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.head = nn.Conv2d(3, 8, 3), nn.Linear(8, 2)

        def forward(self, x):
            x = self.stem(x)
            g = torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1)  # (8,) -> (1, 8, 1, 1)
            return self.head((x * g.expand(x.shape[0], -1, 1, 1).expand_as(x)).mean((2, 3)))

    torch.manual_seed(0)
    model, x = ConstGate().eval(), torch.randn(2, 3, 6, 6)
    assert [b for b in _blocked(model, x) if b.tensor == "stem.weight" and b.dim == 0]
    assert not prunekit.trace(model, (x,)).groups()


@pytest.mark.parametrize("name", ["ecaresnet26t"])
def test_timm_eca(name):
    model, x, heads = _timm(name, 32)
    result = _prune(model, x, heads)
    assert not [u for u in result.unsupported if "expand_as" in str(u)], result.unsupported


# -- 4. ``Tensor.unfold`` / ``F.unfold`` and relative-position logits (HaloNet, BoTNet) --------------

class Unfolded(nn.Module):
    """Local windows by ``Tensor.unfold`` over H and W (HaloNet's kv blocks): channels pass through."""

    def __init__(self, over_channels: bool = False):
        super().__init__()
        self.over_channels = over_channels
        self.stem, self.mix, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 1), nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        if self.over_channels:
            w = x.unfold(1, 4, 4)  # (B, 16, H, W) -> (B, 4, H, W, 4): windows across channels
            x = x * w.sum(-1).mean(1, keepdim=True)
        else:
            w = x.unfold(2, 4, 2).unfold(3, 4, 2)  # (B, C, H, W) -> (B, C, nH, nW, 4, 4)
            x = w.amax((-1, -2))  # (B, C, nH, nW)
        return self.head(F.relu(self.mix(x)).mean((2, 3)))


class Im2col(nn.Module):
    """``F.unfold`` (im2col) then a Linear over (C * k * k): a conv written by hand."""

    def __init__(self):
        super().__init__()
        self.stem, self.proj, self.head = nn.Conv2d(3, 8, 1), nn.Linear(8 * 9, 12), nn.Linear(12, 4)

    def forward(self, x):
        cols = F.unfold(F.relu(self.stem(x)), kernel_size=3, padding=1)  # (B, 8, H, W) -> (B, 8 * 9, H * W)
        return self.head(F.relu(self.proj(cols.transpose(1, 2))).mean(1))


class RelPosLogits(nn.Module):
    """timm's ``rel_logits_1d``: ``q @ rel_k.T``, pad, flatten, pad, reshape (relative -> absolute)."""

    def __init__(self, w: int = 4, dim: int = 8):
        super().__init__()
        self.w = w
        self.qk = nn.Conv2d(3, 2 * dim, 1)
        self.rel_k = nn.Parameter(torch.randn(2 * w - 1, dim) * 0.1)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        q, v = self.qk(x).permute(0, 2, 3, 1).chunk(2, dim=-1)  # (B, 2 * dim, H, W) -> 2 x (B, H, W, dim)
        B, H, W, _ = q.shape
        rel = self.rel_k.shape[0]
        lg = (q @ self.rel_k.transpose(-1, -2)).reshape(-1, W, rel)  # (B, H, W, rel) -> (B * H, W, rel)
        lg = F.pad(F.pad(lg, [0, 1]).flatten(1), [0, rel - W])  # (B * H, W, rel + 1) -> (B * H, (W + 1) * rel)
        lg = lg.reshape(-1, W + 1, rel)[:, :W, self.w - 1:]  # (B * H, (W + 1) * rel) -> (B * H, W + 1, rel)
        attn = lg.reshape(B, H, W, W).softmax(-1)  # (B * H, W, W) -> (B, H, W, W)
        return self.head((attn @ v).mean((1, 2)))


def test_unfold_over_space_passes_channels_through():
    torch.manual_seed(0)
    model, x = Unfolded().eval(), torch.randn(2, 3, 8, 8)
    result = _prune(model, x)
    assert not result.unsupported, result.unsupported
    assert model.stem.out_channels == 8 and model.mix.out_channels == 8


def test_unfold_over_channels_keeps_them_with_a_reason():
    """Negative control: windows across the channel dim cannot follow a pruned channel."""
    torch.manual_seed(0)
    model, x = Unfolded(over_channels=True).eval(), torch.randn(2, 3, 8, 8)
    kept = [b for b in _blocked(model, x) if b.tensor == "stem.weight" and b.dim == 0]
    assert kept and kept[0].op == "unfold" and "sliding windows" in kept[0].reason, kept
    result = _prune(model, x)
    assert not result.unsupported and model.stem.out_channels == 16 and model.mix.out_channels == 8


def test_im2col_prunes_channels_with_their_kernel_rows():
    torch.manual_seed(0)
    model, x = Im2col().eval(), torch.randn(2, 3, 6, 6)
    result = _prune(model, x)
    assert not result.unsupported, result.unsupported
    assert model.stem.out_channels == 4 and model.proj.weight.shape == (6, 4 * 9)
    assert result.verified["checked"] == "exact" and result.verified["error"] <= 1e-5


def test_relative_position_logits_trace_without_rule_errors():
    torch.manual_seed(0)
    model, x = RelPosLogits().eval(), torch.randn(2, 3, 4, 4)
    result = prunekit.prune_(model, x, ratio=0.5, keep_outputs=("head",))
    assert not result.unsupported, result.unsupported  # was: ValueError: cannot reshape array ...
    # the relative-position table is kept, by the reshape to its own size or the pad, with the op named
    kept = [b for b in result.blocked if b.tensor == "rel_k" and b.dim == 0]
    assert kept and {b.op for b in kept} <= {"reshape", "pad"} and all(b.reason for b in kept), kept
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name,side,kw", [("halonet26t", 256, {"img_size": 256}),
                                          ("botnet26t_256", 64, {"img_size": 64})])
def test_timm_relative_position_attention(name, side, kw):
    model, x, heads = _timm(name, side, **kw)
    result = _prune(model, x, heads)
    assert not result.unsupported, result.unsupported
    assert result.verified["checked"] == "exact" and result.macs_ratio < 0.32  # 0.254 / 0.295 measured


# -- 5. a per-head attention-bias table indexed by a 2-d lookup, optionally cached (TinyViT, LeViT) -------

class BiasTableAttention(nn.Module):
    """TinyViT's Attention: ``biases[:, idxs]`` (H, N, N) passed to SDPA as a 3-d mask, cached in eval."""

    def __init__(self, dim: int = 16, heads: int = 4, n: int = 9, bias: str = "table", cache: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.bias, self.cache = heads, dim // heads, bias, cache
        self.inp, self.qkv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)
        self.attention_biases = nn.Parameter(torch.randn(heads, n) * 0.5)
        self.register_buffer("attention_bias_idxs", torch.randint(0, n, (n, n)))
        self.attention_bias_cache: dict[str, torch.Tensor] = {}

    def _biases(self, n: int, device: torch.device) -> torch.Tensor:
        if self.bias == "constant":
            return torch.linspace(-1, 1, self.num_heads * n * n).view(self.num_heads, n, n)  # (H*N*N,) -> (H, N, N)
        if not self.cache:
            return self.attention_biases[:, self.attention_bias_idxs]
        key = str(device)  # as timm: one copy per device
        if key not in self.attention_bias_cache:
            self.attention_bias_cache[key] = self.attention_biases[:, self.attention_bias_idxs]
        return self.attention_bias_cache[key]

    def forward(self, x):
        x = self.inp(x)
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self._biases(N, x.device))  # (B, H, N, hd)
        o = o.transpose(1, 2).reshape(B, N, -1)  # (B, H, N, hd) -> (B, N, H*hd)
        return self.head((x + self.proj(o)).mean(1))


def _heads_kept(model, x) -> list:
    return [b for b in _blocked(model, x) if b.tensor == "qkv.weight" and b.dim == 0]


def test_bias_table_indexed_by_a_2d_lookup_prunes_heads():
    torch.manual_seed(0)
    model, x = BiasTableAttention().eval(), torch.randn(2, 9, 16)
    assert not _heads_kept(model, x), _heads_kept(model, x)
    result = _prune(model, x)
    assert not result.warnings, result.warnings
    assert model.num_heads < 4 and model.attention_biases.shape[0] == model.num_heads
    assert result.verified["error"] <= 1e-4


def test_cached_bias_table_keeps_heads_with_the_cache_named():
    torch.manual_seed(0)
    model, x = BiasTableAttention(cache=True).eval(), torch.randn(2, 9, 16)
    kept = [b for b in _blocked(model, x) if b.tensor == "attention_biases" and b.dim == 0]
    assert kept and "attention_bias_cache" in kept[0].reason, kept
    model.attention_bias_cache.clear()
    result = prunekit.prune_(model, x, ratio=0.5, keep_outputs=("head",))
    assert not [w for w in result.warnings if "heads failed" in w], result.warnings  # no failing plan tried
    assert model.num_heads == 4 and result.verified
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_constant_per_head_mask_keeps_heads():
    """Negative control: a (H, N, N) mask computed from no parameter cannot lose a head."""
    torch.manual_seed(0)
    model, x = BiasTableAttention(bias="constant").eval(), torch.randn(2, 9, 16)
    pinned = set(prunekit.trace(model, (x,)).store.pinned.values())
    assert any("attention mask heads with an unprunable tensor" in r for r in pinned), pinned
    prunekit.prune_(model, x, ratio=0.5, keep_outputs=("head",))
    assert model.num_heads == 4 and model.inp.out_features == 8  # the rest is pruned


def test_tiny_vit_tries_no_failing_head_plan():
    model, x, heads = _timm("tiny_vit_5m_224", 64)
    result = _prune(model, x, heads)
    assert not [w for w in result.warnings if "heads failed" in w], result.warnings
    assert any("attention_bias_cache" in r for r in result.kept_reasons(50))


# -- CoaT: head groups split by a sizes attribute, a local head count, a 1x1 conv1d over the width ---------

class SplitHeadsConv(nn.Module):
    """CoaT's ConvRelPosEnc: v's heads split in groups by ``self.channel_splits`` into depthwise convs
    with different windows; the head count is a local read from ``q.shape``."""

    def __init__(self, head_dim: int = 6, splits=(2, 2), literal: bool = False):
        super().__init__()
        self.literal = literal
        self.convs = nn.ModuleList(nn.Conv2d(s * head_dim, s * head_dim, 2 * i + 1, padding=i, groups=s * head_dim)
                                   for i, s in enumerate(splits))
        self.channel_splits = [s * head_dim for s in splits]

    def forward(self, q, v, hw: int):
        B, num_heads, N, C = q.shape
        img = v.transpose(-1, -2).reshape(B, num_heads * C, hw, hw)  # (B, h, N, C) -> (B, h*C, H, W)
        parts = torch.split(img, [12, 12] if self.literal else self.channel_splits, dim=1)
        img = torch.cat([conv(p) for conv, p in zip(self.convs, parts)], dim=1)
        return q * img.reshape(B, num_heads, C, N).transpose(-1, -2)  # (B, h*C, H, W) -> (B, h, N, C)


class CoatLike(nn.Module):
    def __init__(self, literal: bool = False, dim: int = 24, heads: int = 4):
        super().__init__()
        self.num_heads = heads
        self.embed, self.qkv = nn.Conv2d(3, dim, 2, stride=2), nn.Linear(dim, 3 * dim)
        self.crpe, self.proj = SplitHeadsConv(dim // heads, literal=literal), nn.Linear(dim, dim)
        self.aggregate = nn.Conv1d(2, 1, 1)  # (B, 2, C) -> (B, 1, C): pointwise over the width
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        hw = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, C)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = q @ (k.softmax(dim=2).transpose(-1, -2) @ v) + self.crpe(q, v, hw)  # (B, h, N, C/h)
        y = x + self.proj(a.transpose(1, 2).reshape(B, N, C))  # (B, h, N, C/h) -> (B, N, C)
        z = self.aggregate(torch.stack([x.mean(1), y.mean(1)], dim=1)).squeeze(1)  # (B, 2, C) -> (B, C)
        return self.head(z)


def test_coat_pattern_prunes_heads_across_split_groups():
    torch.manual_seed(0)
    model, x = CoatLike().eval(), torch.randn(2, 3, 10, 10)  # sizes: heads 4, head_dim 6, 5 x 5 tokens
    kinds = {g.kind for g in prunekit.trace(model, (x,)).groups()}
    assert "head" in kinds, kinds
    result = _prune(model, x, ("head",))
    assert model.embed.out_channels < 24  # the width, through the 1x1 conv1d
    assert sum(model.crpe.channel_splits) == model.qkv.out_features // 3, model.crpe.channel_splits
    assert [c.out_channels for c in model.crpe.convs] == model.crpe.channel_splits


def test_split_by_literal_sizes_keeps_the_width():
    """Negative control: sizes written in the call cannot be rewritten; the split keeps its input."""
    torch.manual_seed(0)
    model, x = CoatLike(literal=True).eval(), torch.randn(2, 3, 10, 10)
    pinned = set(prunekit.trace(model, (x,)).store.pinned.values())
    assert any("split by given sizes" in r for r in pinned), pinned
    prunekit.prune_(model, x, ratio=0.5, keep_outputs=("head",))  # the width is all one group: nothing goes
    assert model.crpe.channel_splits == [12, 12] and [c.out_channels for c in model.crpe.convs] == [12, 12]


def test_conv1d_with_a_wider_kernel_over_the_width_keeps_it():
    """Negative control for the 1x1 pass-through: a kernel of 3 mixes neighbouring positions."""
    torch.manual_seed(0)
    model, x = CoatLike().eval(), torch.randn(2, 3, 10, 10)
    model.aggregate = nn.Conv1d(2, 1, 3, padding=1)
    kept = [b for b in _blocked(model, x) if b.tensor == "embed.weight" and b.dim == 0]
    assert kept and "conv1d over a prunable spatial dim" in kept[0].reason, kept


def test_coat_tiny():
    model, x, heads = _timm("coat_tiny", 64, img_size=64)
    result = _prune(model, x, heads)
    assert result.macs_ratio < 0.40  # 0.353 measured; 0.689 before (heads and width kept)


# -- SKNet: split into equal paths by a size computed from the module's width ---------------------------

class SplitPaths(nn.Module):
    """timm's SelectiveKernel input split: ``torch.split(x, self.in_channels // self.num_paths, 1)``."""

    def __init__(self, literal: bool = False, in_channels: int = 16, num_paths: int = 2):
        super().__init__()
        self.literal, self.in_channels, self.num_paths = literal, in_channels, num_paths
        self.stem = nn.Conv2d(3, in_channels, 3, padding=1)
        self.paths = nn.ModuleList(nn.Conv2d(in_channels // num_paths, 8, 2 * i + 1, padding=i) for i in range(num_paths))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        parts = torch.split(x, 8, 1) if self.literal else torch.split(x, self.in_channels // self.num_paths, 1)
        y = torch.stack([p(s) for p, s in zip(self.paths, parts)], dim=1).sum(1)
        return self.head(y.mean((2, 3)))


def test_split_by_a_size_computed_from_the_width_prunes_each_path():
    torch.manual_seed(0)
    model, x = SplitPaths().eval(), torch.randn(2, 3, 6, 6)
    result = _prune(model, x)
    assert model.in_channels == model.stem.out_channels < 16
    assert all(p.in_channels == model.in_channels // 2 for p in model.paths)
    assert result.verified["checked"] == "exact"


def test_split_by_a_literal_size_keeps_the_width():
    """Negative control: ``torch.split(x, 8, 1)`` cannot follow a pruned width."""
    torch.manual_seed(0)
    model, x = SplitPaths(literal=True).eval(), torch.randn(2, 3, 6, 6)
    kept = [b for b in _blocked(model, x) if b.tensor == "stem.weight" and b.dim == 0]
    assert kept and kept[0].op == "split" and "written in the code" in kept[0].reason, kept


def test_skresnet18():
    model, x, heads = _timm("skresnet18", 64)
    result = _prune(model, x, heads)
    assert result.verified["checked"] == "exact" and result.macs_ratio < 0.30  # 0.267 measured; 0.539 before
