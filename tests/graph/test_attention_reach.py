"""Reach through the reshape/attention patterns of vision transformers and modern CNNs.

One hand-written module per pattern (timm fused-qkv heads, Swin windowed attention, view after
permute / head-first conv attention, broadcast layer-scale), each with the oracle on its exact
groups and a negative control; then the real timm models at small sizes.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit import soft_hard_error, trace
from prunekit.plan import Plan

from tests.conftest import assert_oracle

KINDS = ("channel", "group", "head")


def _groups_with(graph, kind: str, slice_name: str, dim: int):
    return [g for g in graph.groups(KINDS + ("head_dim",)) if g.kind == kind
            and any((slice_name, dim) in s for s in g.slices)]


# -- 1. timm's fused-qkv attention ----------------------------------------------------------

class FusedQKVAttention(nn.Module):
    """timm ``vision_transformer.Attention``: one qkv Linear, reshape(B, N, 3, H, D), unbind."""

    def __init__(self, dim: int = 32, num_heads: int = 4, fused: bool = True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = self.num_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, D)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            x = attn.softmax(dim=-1) @ v
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)  # (B, N, H*D)
        return self.proj(x)


class TinyViT(nn.Module):
    def __init__(self, num_heads: int = 4, fused: bool = True):
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.attn = FusedQKVAttention(32, num_heads, fused)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x)
        return self.head(x.mean(1))


@pytest.mark.parametrize("num_heads", [4, 3])  # 3 heads: the literal 3 of q/k/v equals num_heads
@pytest.mark.parametrize("fused", [True, False])
def test_fused_qkv_heads(fused, num_heads):
    model = TinyViT(num_heads, fused).eval()
    x = torch.randn(2, 7, 12)
    graph = trace(model, x)
    heads = _groups_with(graph, "head", "attn.qkv.weight", 0)
    assert len(heads) == 1 and len(heads[0]) == num_heads and heads[0].exact
    _, _, plan = assert_oracle(model, x, kinds=("head",))
    hard = prunekit.apply_plan(copy.deepcopy(model), plan, "hard")
    # heads x width lose half the attention width together: 4 x 8 -> 2 whole heads; 3 x 10 -> 3 x 5
    kept, head_dim = (2, 8) if num_heads == 4 else (3, 5)
    width = kept * head_dim
    assert (hard.attn.num_heads, hard.attn.attn_dim, hard.attn.head_dim) == (kept, width, head_dim)
    assert hard.attn.qkv.weight.shape == (3 * width, 32) and hard.attn.proj.weight.shape == (32, width)


def test_fused_qkv_mismatched_heads_is_flagged():
    """Negative control: q rows of head 0 but k rows of head 1 gone is no longer attention."""
    model = TinyViT(4).eval()
    with torch.no_grad():
        model.attn.qkv.weight.mul_(4)  # sharper attention: a wrong pairing shows clearly
    x = torch.randn(2, 7, 12)
    rows = lambda part, head: list(range(part * 32 + head * 8, part * 32 + head * 8 + 8))  # noqa: E731
    good = Plan({"attn.qkv.weight": {0: rows(0, 0) + rows(1, 0) + rows(2, 0)},
                 "attn.qkv.bias": {0: rows(0, 0) + rows(1, 0) + rows(2, 0)},
                 "attn.proj.weight": {1: list(range(8))}}, [("attn", "attn_dim", 24), ("attn", "num_heads", 3)])
    bad = copy.deepcopy(good)
    bad.removed["attn.qkv.weight"][0] = bad.removed["attn.qkv.bias"][0] = rows(0, 0) + rows(1, 1) + rows(2, 0)
    assert soft_hard_error(model, good, x) <= 1e-4
    assert soft_hard_error(model, bad, x) > 1e-2


class NormedQueryAttention(FusedQKVAttention):
    """timm's ``qk_norm=True``: q and k normalized over the head width before SDPA's default scale."""

    def __init__(self, dim: int = 32, num_heads: int = 3):
        super().__init__(dim, num_heads, True)
        self.q_norm, self.k_norm = nn.LayerNorm(self.head_dim), nn.LayerNorm(self.head_dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)  # (B, H, N, D)
        return self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim))


def _sharp_vit(num_heads: int = 3) -> TinyViT:
    torch.manual_seed(0)
    model = TinyViT(num_heads, fused=True).eval()
    with torch.no_grad():
        model.attn.qkv.weight.mul_(4)  # sharper attention: a wrong softmax scale shows clearly
    return model


def test_default_scale_head_width_prunes_exactly_with_rescaled_queries():
    """SDPA with no ``scale`` divides by sqrt(head width): cutting 10 -> 5 would sharpen every softmax, so the
    kept query rows (weight and bias) are multiplied by sqrt(5 / 10) and the pruned model equals the zeroed
    original. 3 heads at ratio 0.5 keep 3 x 5 (whole heads could only keep 2 of 3)."""
    model, x = _sharp_vit(3), torch.randn(2, 7, 12)
    width = _groups_with(trace(model, x), "head_dim", "attn.qkv.weight", 0)
    assert len(width) == 1 and width[0].exact
    assert_oracle(copy.deepcopy(model), x, kinds=("head",))
    fresh = copy.deepcopy(model)
    r = prunekit.prune_(model, x, ratio=0.5, keep_outputs=("head",))
    assert r.verified["checked"] == "exact"
    assert (model.attn.num_heads, model.attn.head_dim) == (3, 5)
    assert {(n, d) for n, d, _, _ in r.plan.rescale} == {("attn.qkv.weight", 0), ("attn.qkv.bias", 0)}
    assert all(abs(f - 0.5 ** 0.5) < 1e-12 and len(idx) == 15 for _, _, idx, f in r.plan.rescale)  # q rows only
    replay = Plan.from_json(r.plan.to_json())  # the factor travels with the plan
    assert replay.rescale == r.plan.rescale
    prunekit.apply_plan(fresh, replay, "hard")
    assert torch.equal(fresh(x), model(x))


def test_head_width_without_the_query_rescale_is_wrong():
    """Negative control: the same plan with its rescale dropped gives a different model."""
    model, x = _sharp_vit(3), torch.randn(2, 7, 12)
    r = prunekit.prune_(copy.deepcopy(model), x, ratio=0.5, keep_outputs=("head",))
    assert r.plan.rescale and soft_hard_error(model, r.plan, x) <= 1e-4
    bare = copy.deepcopy(r.plan)
    bare.rescale = []
    assert soft_hard_error(model, bare, x) > 1e-3


def test_rescale_that_does_not_fit_the_model_is_refused():
    from prunekit.errors import PlanError

    model, x = _sharp_vit(3), torch.randn(2, 7, 12)
    r = prunekit.prune_(copy.deepcopy(model), x, ratio=0.5, keep_outputs=("head",))
    for bad in (("attn.qkv.weight", 0, [90], 0.5), ("attn.qkv.weight", 2, [0], 0.5), ("nope", 0, [0], 0.5),
                ("attn.qkv.weight", 0, [0], float("nan"))):
        plan = copy.deepcopy(r.plan)
        plan.rescale = [bad]
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(PlanError):
            prunekit.apply_plan(model, plan, "hard")
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_normed_query_width_is_not_cut_by_default():
    """A LayerNorm over the head width (qk_norm) makes the width approximate: by default only whole heads
    go (1 of 3); asking for ``head_dim`` cuts it, verified for finiteness only."""
    torch.manual_seed(0)
    model, x = TinyViT(3).eval(), torch.randn(2, 7, 12)
    model.attn = NormedQueryAttention(32, 3).eval()
    r = prunekit.prune_(copy.deepcopy(model), x, ratio=0.5, keep_outputs=("head",))
    assert not r.plan.rescale and {g["kind"] for g in r.plan.groups} == {"channel", "head"}
    assert r.verified["checked"] in ("exact", "exact-norm-aware")
    m2 = copy.deepcopy(model)
    r2 = prunekit.prune_(m2, x, ratio=0.5, keep_outputs=("head",), kinds=("channel", "head", "head_dim"))
    assert "head_dim" in {g["kind"] for g in r2.plan.groups} and m2.attn.num_heads * m2.attn.head_dim <= 15


# -- 2. windowed attention (Swin) -------------------------------------------------------------

def window_partition(x, ws: int):
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)  # (B, nH, ws, nW, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)  # (B*nH*nW, ws, ws, C)


def window_reverse(windows, ws: int, H: int, W: int):
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C)  # (B, nH, nW, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, C)  # (B, H, W, C)


class WindowAttention(nn.Module):
    def __init__(self, dim: int = 16, ws: int = 2, num_heads: int = 4, shifted_mask: bool = False):
        super().__init__()
        self.num_heads, self.ws, self.window_area = num_heads, ws, ws * ws
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # (2, N)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + ws - 1  # (N, N, 2)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
        self.register_buffer("mask", torch.randn(4, ws * ws, ws * ws) if shifted_mask else None)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (3, B_, H, N, D)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, H)
        bias = bias.view(self.window_area, self.window_area, -1).permute(2, 0, 1).unsqueeze(0)  # (1, H, N, N)
        if self.mask is not None:  # timm's shifted-window mask, expanded to the heads
            nw = self.mask.shape[0]
            mask = self.mask.view(1, nw, 1, N, N).expand(B_ // nw, -1, self.num_heads, -1, -1)  # (B, nw, H, N, N)
            bias = bias + mask.reshape(-1, self.num_heads, N, N)  # (B_, H, N, N)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B_, H, N, D)
        return self.proj(x.transpose(1, 2).reshape(B_, N, -1))  # (B_, N, C)


class TinySwin(nn.Module):
    def __init__(self, shifted_mask: bool = False):
        super().__init__()
        self.embed = nn.Linear(3, 16)
        self.attn = WindowAttention(shifted_mask=shifted_mask)
        self.fc = nn.Linear(16, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):  # x: (B, H, W, 3)
        B, H, W, _ = x.shape
        x = self.embed(x)
        w = window_partition(x, 2).view(-1, 4, x.shape[-1])  # (B*nW, ws*ws, C)
        C = x.shape[-1]  # read from the tensor, as Swin does (a literal 16 here could not be rewritten)
        x = x + window_reverse(self.attn(w).view(-1, 2, 2, C), 2, H, W)
        return self.head(F.gelu(self.fc(x)).mean((1, 2)))


@pytest.mark.parametrize("shifted_mask", [False, True])
def test_window_attention_heads_and_channels(shifted_mask):
    model = TinySwin(shifted_mask).eval()
    x = torch.randn(2, 4, 4, 3)
    graph = trace(model, x)
    heads = _groups_with(graph, "head", "attn.relative_position_bias_table", 1)  # the table's head columns go too
    assert len(heads) == 1 and len(heads[0]) == 4 and heads[0].exact
    assert any(("attn.qkv.weight", 0) in s for s in heads[0].slices)
    # the residual width flows through window partition and reverse: embed out, qkv in, proj out, fc in
    (width,) = _groups_with(graph, "channel", "embed.weight", 0)
    assert {("attn.qkv.weight", 1), ("attn.proj.weight", 0), ("fc.weight", 1)} <= set(width.slices[0])
    _, _, plan = assert_oracle(model, x, kinds=KINDS, min_groups=3)
    hard = prunekit.apply_plan(copy.deepcopy(model), plan, "hard")
    assert hard.attn.num_heads == 2 and hard.attn.relative_position_bias_table.shape == (9, 2)


# -- 3. view after permute, head-first conv attention (CoAtNet) -------------------------------

class ConvAttention2d(nn.Module):
    """timm maxxvit ``Attention2d`` (head_first): ``view(B, heads, 3 * dim_head, -1).chunk(3, 2)``."""

    def __init__(self, dim: int = 16, dim_head: int = 4):
        super().__init__()
        self.num_heads, self.dim_head = dim // dim_head, dim_head
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).view(B, self.num_heads, self.dim_head * 3, -1).chunk(3, dim=2)  # (B, h, d, HW)
        x = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return self.proj(x.transpose(-1, -2).reshape(B, -1, H, W))  # (B, h*d, H, W)


class TinyCoAt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.attn = ConvAttention2d()
        self.mlp = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.attn(x)
        B, C, H, W = x.shape
        t = x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C): merge after a permute
        t = F.gelu(self.mlp(t)).view(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W)
        return self.head((x + t).mean((2, 3)))


def test_view_after_permute_and_head_first_conv_attention():
    model = TinyCoAt().eval()
    x = torch.randn(2, 3, 4, 4)
    graph = trace(model, x)
    (heads,) = _groups_with(graph, "head", "attn.qkv.weight", 0)
    assert len(heads) == 4 and heads.exact
    # dim_head * 3 is a literal in the view: qkv rows are not free channels (the old bug pruned them
    # while leaving num_heads and dim_head as they were)
    assert not _groups_with(graph, "channel", "attn.qkv.weight", 0)
    (width,) = _groups_with(graph, "channel", "stem.weight", 0)
    assert {("mlp.weight", 0), ("mlp.weight", 1), ("head.weight", 1)} <= set(width.slices[0])
    _, _, plan = assert_oracle(model, x, kinds=KINDS, min_groups=2)
    hard = prunekit.apply_plan(copy.deepcopy(model), plan, "hard")
    assert hard.attn.num_heads == 2 and hard.attn.qkv.weight.shape[0] == 2 * 3 * 4
    assert hard(x).shape == (2, 5)


# -- 4. layer-scale vectors reshaped for broadcasting (PoolFormer, LayerScale2d) --------------

class ScaleBlock(nn.Module):
    def __init__(self, dim: int, how: str):
        super().__init__()
        self.dim, self.how = dim, how
        self.shape = (dim, 1, 1)
        self.conv = nn.Conv2d(dim, dim, 1)
        self.layer_scale = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        s = self.layer_scale
        if self.how == "view":
            s = s.view(-1, 1, 1)  # (C, 1, 1)
        elif self.how == "view_attr":
            s = s.view(self.dim, 1, 1)  # (C, 1, 1), C from an int attribute (rewritten)
        elif self.how == "unsqueeze":
            s = s.unsqueeze(-1).unsqueeze(-1)  # (C, 1, 1)
        else:  # "tuple_attr": timm metaformer.Scale, the shape held in a tuple attribute
            s = s.view(self.shape)  # (C, 1, 1)
        return x + self.conv(x) * s


class TinyPoolFormer(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = ScaleBlock(8, how)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("how", ["view", "view_attr", "unsqueeze"])
def test_layer_scale_broadcast_is_coupled(how):
    model = TinyPoolFormer(how).eval()
    x = torch.randn(2, 3, 6, 6)
    graph = trace(model, x)
    (width,) = _groups_with(graph, "channel", "block.layer_scale", 0)
    assert {("stem.weight", 0), ("block.conv.weight", 0), ("block.conv.weight", 1)} <= set(width.slices[0])
    _, _, plan = assert_oracle(model, x)
    hard = prunekit.apply_plan(copy.deepcopy(model), plan, "hard")
    assert hard.block.layer_scale.shape == (4,) and hard(x).shape == (2, 5)
    if how == "view_attr":
        assert hard.block.dim == 4


def test_layer_scale_in_tuple_attribute_is_rewritten():
    """timm metaformer.Scale: ``view(self.shape)`` with ``shape = (C, 1, 1)``; element 0 is rewritten."""
    model = TinyPoolFormer("tuple_attr").eval()
    x = torch.randn(2, 3, 6, 6)
    graph = trace(model, x)
    (width,) = _groups_with(graph, "channel", "block.layer_scale", 0)
    assert {("stem.weight", 0), ("block.conv.weight", 0), ("block.conv.weight", 1)} <= set(width.slices[0])
    assert not [r for r in graph.store.pinned.values() if "tuple attribute" in r]
    _, _, plan = assert_oracle(model, x)
    assert ("block", "shape[0]", 4) in plan.attrs
    hard = prunekit.apply_plan(copy.deepcopy(model), plan, "hard")
    assert hard.block.shape == (4, 1, 1) and isinstance(hard.block.shape, tuple) and hard(x).shape == (2, 5)
    r = prunekit.prune_(model, x, ratio=0.5)  # verified against the zeroed original inside prune_
    assert model.block.layer_scale.shape == (4,) and model.block.shape == (4, 1, 1) and r.macs_ratio < 0.7


def test_tuple_attribute_left_stale_is_caught():
    """Negative control: the same plan without the tuple rewrite fails its apply and restores the model."""
    model = TinyPoolFormer("tuple_attr").eval()
    x = torch.randn(2, 3, 6, 6)
    _, _, plan = assert_oracle(model, x)
    stale = copy.deepcopy(plan)
    stale.attrs = [a for a in stale.attrs if a[1] != "shape[0]"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(prunekit.errors.PrunekitError):
        prunekit.apply_plan(model, stale, "hard", example_inputs=x)
    assert model.block.shape == (8, 1, 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class RelPosBias(nn.Module):
    """timm ``RelPosBias``: the table's head columns viewed to ``self.bias_shape`` (a tuple) in a submodule."""

    def __init__(self, ws: int, num_heads: int):
        super().__init__()
        self.window_area = ws * ws
        self.bias_shape = (self.window_area, self.window_area, num_heads)
        self.relative_position_bias_table = nn.Parameter(torch.randn(self.window_area * self.window_area, num_heads))

    def get_bias(self):
        bias = self.relative_position_bias_table.view(self.bias_shape)  # (N, N, H)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, H, N, N)


class RelPosAttention(nn.Module):
    def __init__(self, dim: int = 16, num_heads: int = 4, ws: int = 2):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rel_pos = RelPosBias(ws, num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, D)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=self.rel_pos.get_bias())  # (B, H, N, D)
        return self.proj(x.transpose(1, 2).reshape(B, N, -1))  # (B, N, C)


def test_relative_position_bias_shape_tuple_heads_prune():
    model = nn.Sequential(nn.Linear(5, 16), RelPosAttention(), nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.randn(2, 4, 5)
    graph = trace(model, x)
    (heads,) = _groups_with(graph, "head", "1.qkv.weight", 0)
    assert len(heads) == 4 and heads.exact
    assert any(("1.rel_pos.relative_position_bias_table", 1) in s for s in heads.slices)
    _, _, plan = assert_oracle(model, x, kinds=("head",))
    assert ("1.rel_pos", "bias_shape[2]", 2) in plan.attrs
    hard = prunekit.apply_plan(copy.deepcopy(model), plan, "hard", example_inputs=x)
    assert hard[1].rel_pos.bias_shape == (4, 4, 2) and hard[1].num_heads == 2


def test_layer_scale_negative_control():
    """Removing a scale entry but not the channel it multiplies is flagged."""
    model = TinyPoolFormer("view").eval()
    x = torch.randn(2, 3, 6, 6)
    graph, _, plan = assert_oracle(model, x)
    bad = copy.deepcopy(plan)
    idx = bad.removed["block.layer_scale"][0]
    bad.removed["block.layer_scale"][0] = [i for i in range(8) if i not in idx][:len(idx)]  # other entries
    assert soft_hard_error(model, bad, x) > 1e-2


# -- the real timm models ---------------------------------------------------------------------

timm = pytest.importorskip("timm")

# (name, create_model kwargs, input size, MACs-ratio bound at ratio 0.5, what must have been pruned); measured
# MACs ratios with these configs: 0.305, 0.294, 0.291, 0.564 (before: heads kept / 0.680 for full vit_tiny,
# coatnet and poolformer restored: ratio 1.0). PoolFormer's residual width stays: its Scale views to a tuple.
TIMM = [
    ("vit_tiny_patch16_224", dict(img_size=32, depth=2), 32, 0.33, "heads"),
    ("swin_tiny_patch4_window7_224", dict(img_size=56, embed_dim=32, depths=(2, 2), num_heads=(2, 4)), 56, 0.32,
     "heads"),
    ("test_coatnet", dict(img_size=64), 64, 0.285, "heads"),
    ("poolformer_s12", dict(), 64, 0.30, "channels"),
]


@pytest.mark.parametrize("name,kw,size,bound,what", TIMM, ids=[t[0] for t in TIMM])
def test_timm_models_prune(name, kw, size, bound, what):
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    x = torch.randn(1, 3, size, size)
    attns = [m for m in model.modules() if hasattr(m, "num_heads") and hasattr(m, "qkv")]
    heads_before = [m.num_heads for m in attns]
    r = prunekit.prune_(model, x, ratio=0.5)
    assert r.macs_ratio < bound
    if what == "heads":
        assert [m.num_heads for m in attns] != heads_before
    assert model(x).shape == (1, 10)


class ResidualWidthAttention(nn.Module):
    """One head whose width is the residual's: ``reshape(B, N, C)`` with C read from the input couples the value
    width, and through q.k and the shared kv axis the query rows, to the residual stream (PVT-v2's stage 0)."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.num_heads, self.head_dim = 1, dim
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)  # (B, 1, N, C)
        kv = self.kv(x).reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (2, B, 1, N, C)
        k, v = kv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, 1, N, C)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


def test_query_rows_coupled_beyond_themselves_are_not_rescaled():
    """Negative control for the fold: the query rows' classes hold the whole residual stream, so scaling
    them would scale everything; the width is marked approximate instead and no rescale is planned."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), ResidualWidthAttention(16), nn.Linear(16, 5)).eval()
    x = torch.randn(2, 7, 12)
    graph = trace(model, x)
    graph.groups()
    assert len(graph.store.folds) == 1 and graph._resolver.folds == []  # recorded, then refused
    r = prunekit.prune_(model, x, ratio=0.5, keep_outputs=("2",))
    assert not r.plan.rescale and not r.plan.exact
    assert model[1].q.out_features == 8  # pruned with the residual, verified for finite outputs


class CrossAttention(nn.Module):
    """crossvit's cross-attention: the head width is ``C // self.num_heads`` with C read from the residual, for
    q, k and v alike, so their widths must be cut by the same count. ``soft_v``: a softmax over v's width
    (a stand-in for any op that makes that width approximate)."""

    def __init__(self, dim: int = 24, num_heads: int = 3, soft_v: bool = False):
        super().__init__()
        self.num_heads, self.soft_v = num_heads, soft_v
        self.wq, self.wk, self.wv, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        B, N, C = x.shape
        q = self.wq(x[:, 0:1, ...]).reshape(B, 1, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        k = self.wk(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)  # (B, H, N, C/H)
        v = self.wv(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        if self.soft_v:
            v = v.softmax(-1)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, C/H)
        return self.proj(x.transpose(1, 2).reshape(B, 1, C))  # (B, 1, C)


class TinyCrossViT(nn.Module):
    def __init__(self, soft_v: bool = False):
        super().__init__()
        self.embed, self.norm = nn.Linear(5, 24), nn.LayerNorm(24)
        self.attn, self.head = CrossAttention(24, 3, soft_v), nn.Linear(24, 4)

    def forward(self, x):
        x = self.embed(x)
        x = torch.cat([x[:, 0:1] + self.attn(self.norm(x)), x[:, 1:]], 1)
        return self.head(x[:, 0])


def test_cross_attention_widths_computed_from_the_residual_are_cut_by_one_count():
    """3 heads of 8 at 0.5: 2 heads of 6 (q/k and v widths alike; the residual is heads x v width), verified
    against the zeroed original with norms over the kept channels."""
    torch.manual_seed(0)
    model, x = TinyCrossViT().eval(), torch.randn(2, 6, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "heads failed" fallback
        r = prunekit.prune_(model, x, ratio=0.5, keep_outputs=("head",))
    assert r.verified["checked"] == "exact-norm-aware"
    assert model.attn.num_heads == 2 and model.attn.wq.out_features == model.attn.wv.out_features == 12
    assert model.embed.out_features == 12


def test_cross_attention_with_one_width_approximate_cuts_neither():
    """Negative control: v's width is approximate (a softmax over it), so neither width is cut by default
    (cutting q/k alone would break ``C // num_heads``): whole heads only."""
    torch.manual_seed(0)
    model, x = TinyCrossViT(soft_v=True).eval(), torch.randn(2, 6, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = prunekit.prune_(model, x, ratio=0.5, keep_outputs=("head",))
    assert {g["kind"] for g in r.plan.groups} == {"head"}
    assert model.attn.num_heads == 2 and model.attn.wq.out_features == model.attn.wv.out_features == 16
