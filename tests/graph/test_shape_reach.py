"""Where the sizes of a reshape come from (graph/rules/callsite.py) and what that decides.

A size written as an integer in the code never follows a pruned dim, even when it happens to equal a
width whose size was read elsewhere; ``self.name`` is rewritten; a local read from another tensor's
shape couples the two dims (HF CLIP's ``reshape(B, T, embed_dim)``). Each case with the oracle or
``prune_``'s verification, and a control that the old size-matching guess got it wrong.
"""
from __future__ import annotations

import copy
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit import PruneConfig, make_plan, select_units, trace
from prunekit.graph.rules import callsite

from tests.conftest import assert_oracle

KINDS = ("channel", "group", "head")


def _group_of(graph, name: str, dim: int, kind: str = "channel"):
    found = [g for g in graph.groups(KINDS + ("head_dim",)) if g.kind == kind and any((name, dim) in s for s in g.slices)]
    return found[0] if found else None


# -- a literal equal to a width read elsewhere ----------------------------------------------------

class WindowMix(nn.Module):
    """Mixes 2x2 windows of an inner width of 16 written in the code, beside a residual width of 16."""

    def __init__(self, literal: bool = True):
        super().__init__()
        self.literal = literal
        self.inner = 16
        self.fc = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, x):  # x: (B, H, W, C)
        B, H, W, C = x.shape  # the residual width is read here: 16
        h = F.gelu(self.fc(x))  # (B, H, W, 16)
        if self.literal:
            w = h.view(-1, 2, 2, 16)  # (B*H*W/4, 2, 2, 16): 16 written in the code
        else:
            w = h.view(-1, 2, 2, self.inner)  # (B*H*W/4, 2, 2, inner): rewritten after pruning
        w = w.flip(1)
        return x + self.out(w.reshape(B, H, W, -1))  # (B, H, W, inner)


class TinyMix(nn.Module):
    def __init__(self, literal: bool = True):
        super().__init__()
        self.embed = nn.Linear(3, 16)
        self.block = WindowMix(literal)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.block(self.embed(x)).mean((1, 2)))


def test_literal_size_is_not_tied_to_an_equal_width_read_elsewhere():
    model = TinyMix(literal=True).eval()
    x = torch.randn(2, 4, 4, 3)
    graph = trace(model, x)
    width = _group_of(graph, "embed.weight", 0)
    assert width is not None and len(width) == 16
    # the old guess unified the window width with the residual (both 16): fc's outputs joined it
    assert ("block.fc.weight", 0) not in set(width.slices[0])
    assert _group_of(graph, "block.fc.weight", 0) is None
    why = [b for b in graph.blocked() if b.tensor == "block.fc.weight" and b.dim == 0]
    assert why and why[0].op == "view" and why[0].module == "block" and "16 written in the code" in why[0].reason
    _, _, plan = assert_oracle(model, x, kinds=KINDS)
    r = prunekit.prune_(model, x, ratio=0.5)  # verified against the zeroed original
    assert model.embed.weight.shape[0] == 8 and model.block.fc.weight.shape[0] == 16 and r.macs_ratio < 0.9


def test_attribute_size_is_rewritten():
    model = TinyMix(literal=False).eval()
    x = torch.randn(2, 4, 4, 3)
    graph = trace(model, x)
    inner = _group_of(graph, "block.fc.weight", 0)
    assert inner is not None and ("block.out.weight", 1) in set(inner.slices[0])
    _, _, plan = assert_oracle(model, x, kinds=KINDS, min_groups=2)
    assert ("block", "inner", 8) in plan.attrs
    prunekit.prune_(model, x, ratio=0.5)
    assert model.block.inner == 8 and model.block.fc.weight.shape == (8, 8)


def test_old_guess_would_break_the_literal_view():
    """Negative control: pruning fc's outputs with the residual (the old tie) cannot be applied."""
    model = TinyMix(literal=True).eval()
    x = torch.randn(2, 4, 4, 3)
    graph = trace(model, x)
    plan = prunekit.plan.Plan({"block.fc.weight": {0: [0, 1]}, "block.fc.bias": {0: [0, 1]},
                               "block.out.weight": {1: [0, 1]}})
    with pytest.raises(prunekit.errors.PrunekitError, match="block"):
        prunekit.apply_plan(copy.deepcopy(model), plan, "hard", example_inputs=x)


def test_source_unavailable_falls_back_to_sizes():
    """Code without source (``exec``): kinds are unknown and the size guess decides, as before."""
    ns: dict = {}
    exec(textwrap.dedent("""
        import torch.nn.functional as F
        def forward(self, x):
            B, H, W, C = x.shape
            h = F.gelu(self.fc(x))
            return x + self.out(h.view(-1, 2, 2, 16).flip(1).reshape(B, H, W, -1))
    """), ns)
    model = TinyMix(literal=True).eval()
    model.block.forward = ns["forward"].__get__(model.block)
    x = torch.randn(2, 4, 4, 3)
    assert callsite._call_args is not None
    graph = trace(model, x)
    width = _group_of(graph, "embed.weight", 0)
    assert width is None or ("block.fc.weight", 0) in set(width.slices[0])  # tied by size, as before
    prunekit.prune_(model, x, ratio=0.5)  # whatever it does, the returned model is verified


def test_literal_head_split_is_fixed():
    """``reshape(B, N, 3, 4, 8)`` with every size written: neither heads nor head width can change."""

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads, self.head_dim = 4, 8
            self.qkv = nn.Linear(32, 96)
            self.proj = nn.Linear(32, 32)

        def forward(self, x):
            B, N, _ = x.shape
            q, k, v = self.qkv(x).reshape(B, N, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)  # (B, 4, N, 8)
            return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, 32))

    model = nn.Sequential(nn.Linear(6, 32), Attn(), nn.Linear(32, 3)).eval()
    x = torch.randn(2, 5, 6)
    graph = trace(model, x)
    assert _group_of(graph, "1.qkv.weight", 0, "head") is None
    assert _group_of(graph, "1.qkv.weight", 0, "head_dim") is None
    prunekit.prune_(model, x, ratio=0.5)
    assert model[1].qkv.weight.shape[0] == 96


# -- HF CLIP: the attention output is reshaped to the width read from the residual stream -----------

def _clip():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPVisionConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                        intermediate_size=128, image_size=32, patch_size=8)
    return transformers.CLIPVisionModel(cfg).eval()


def test_clip_vision_heads_follow_the_residual_width():
    model = _clip()
    x = torch.randn(1, 3, 32, 32)
    graph = trace(model, x)
    attn = "vision_model.encoder.layers.0.self_attn"
    # ``reshape(B, T, embed_dim)`` with ``embed_dim`` read from ``hidden_states.shape``: the heads' width
    # must stay equal to the residual width, kept here (the model's output), so no head group forms
    assert _group_of(graph, f"{attn}.v_proj.weight", 0, "head") is None
    why = [b for b in graph.blocked() if b.tensor == f"{attn}.v_proj.weight" and b.dim == 0]
    assert why and "kept" in why[0].reason
    mlp = _group_of(graph, "vision_model.encoder.layers.0.mlp.fc1.weight", 0)
    assert mlp is not None and len(mlp) == 128 and mlp.exact
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        r = prunekit.prune_(model, x, ratio=0.5)  # verified; no head plan that fails its apply
    assert not [w for w in record if "heads failed" in str(w.message)]
    layer = model.vision_model.encoder.layers[0]
    assert layer.mlp.fc1.weight.shape == (64, 64) and layer.self_attn.num_heads == 4 and r.macs_ratio < 0.85


def test_clip_heads_prune_with_the_residual_when_it_is_free():
    """With a classifier on top the residual is free: the heads go with it, index by index, in every
    layer (one group; approximate, since LayerNorm normalizes over the residual), and the hard model runs."""
    clip = _clip()

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.clip, self.head = clip, nn.Linear(64, 5)

        def forward(self, x):
            return self.head(self.clip(pixel_values=x).last_hidden_state.mean(1))

    model = Classifier().eval()
    x = torch.randn(1, 3, 32, 32)
    graph = trace(model, x)
    layers = "clip.vision_model.encoder.layers"
    heads = _group_of(graph, f"{layers}.0.self_attn.v_proj.weight", 0, "head")
    assert heads is not None and len(heads) == 4 and not heads.exact
    assert _group_of(graph, f"{layers}.1.self_attn.v_proj.weight", 0, "head").id == heads.id
    assert any(("clip.vision_model.embeddings.patch_embedding.weight", 0) in s for s in heads.slices)
    chosen, summaries = select_units(model, [heads], PruneConfig(ratio=0.5, kinds=("head",)))
    plan = make_plan(graph, chosen, summaries)
    hard = prunekit.apply_plan(copy.deepcopy(model), plan, "hard", example_inputs=x)  # finite outputs checked
    attn = hard.clip.vision_model.encoder.layers[1].self_attn
    assert attn.v_proj.weight.shape == (32, 32) and attn.embed_dim == 32 and hard(x).shape == (1, 5)


# -- channel shuffle written as view/transpose/view (torchvision ShuffleNetV2) ---------------------

def test_shufflenet_stage_width_prunes_with_one_block_per_stage():
    """The shuffle's (groups, C / groups) split is a channel kind (pruned by default, not a head width)."""
    from torchvision.models.shufflenetv2 import ShuffleNetV2

    model = ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 64], num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = trace(model, x)
    width = _group_of(graph, "stage2.0.branch2.5.weight", 0)  # the stage width through cat + shuffle
    assert width is not None and len(width) == 8 and width.exact
    assert any(("stage2.0.branch1.2.weight", 0) in s for s in width.slices)
    assert_oracle(model, x, kinds=KINDS, min_groups=4)
    prunekit.prune_(model, x, ratio=0.5)  # verified
    assert model.stage2[0].branch2[5].weight.shape[0] == 4


def test_shufflenet_deeper_stage_width_says_why():
    """With a chunk after the shuffle the closure of one stage channel doubles at every block and the
    resolver cannot start a unit on a reshape's element: kept, and ``blocked()`` says so."""
    from torchvision.models.shufflenetv2 import ShuffleNetV2

    model = ShuffleNetV2([2, 1, 1], [8, 16, 32, 64, 64], num_classes=5).eval()
    graph = trace(model, torch.randn(1, 3, 32, 32))
    assert _group_of(graph, "stage2.0.branch2.5.weight", 0) is None
    why = [b for b in graph.blocked() if b.tensor == "stage2.0.branch2.5.weight" and b.dim == 0]
    assert why and why[0].op == "structure" and "reshape" in why[0].reason


# -- MobileViT's unfold/fold: the width merged into a leading dim with the batch and patch rows ----------

class PatchFold(nn.Module):
    """MobileViT's block: (B, C, H, W) -> patches (B*P, N, C) through ``reshape(B * C * nh, ...)``, a residual
    MLP over C, and back. ``literal``: the width is written as 24 in the merged size (``B * 24 * nh``)."""

    def __init__(self, literal: bool = False):
        super().__init__()
        self.literal = literal
        self.conv_in = nn.Conv2d(3, 24, 1)
        self.fc1, self.fc2 = nn.Linear(24, 32), nn.Linear(32, 24)
        self.conv_out = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        x = self.conv_in(x)
        B, C, H, W = x.shape
        ph = pw = 2
        nh, nw = H // ph, W // pw
        if self.literal:
            y = x.reshape(B * 24 * nh, ph, nw, pw).transpose(1, 2)  # (B*C*nh, nw, ph, pw), C written in the code
        else:
            y = x.reshape(B * C * nh, ph, nw, pw).transpose(1, 2)  # (B*C*nh, nw, ph, pw)
        y = y.reshape(B, C, nh * nw, ph * pw).transpose(1, 3).reshape(B * ph * pw, nh * nw, -1)  # (B*P, N, C)
        y = y + self.fc2(F.gelu(self.fc1(y)))
        y = y.contiguous().view(B, ph * pw, nh * nw, -1).transpose(1, 3)  # (B, C, N, P)
        y = y.reshape(B * C * nh, nw, ph, pw).transpose(1, 2).reshape(B, C, H, W)  # back to (B, C, H, W)
        return self.conv_out(y)


def test_mobilevit_fold_prunes_the_width_merged_with_batch_and_patch_rows():
    torch.manual_seed(0)
    m, x = PatchFold().eval(), torch.randn(2, 3, 8, 8)
    assert_oracle(copy.deepcopy(m), (x,), min_groups=2)
    r = prunekit.prune_(m, x, ratio=0.5, keep_outputs=("conv_out",))
    assert r.verified["checked"] == "exact"
    assert (m.conv_in.out_channels, m.fc1.in_features, m.fc1.out_features) == (12, 12, 16)


def test_mobilevit_fold_with_the_width_written_in_the_code_keeps_it():
    """Negative control: ``B * 24 * nh`` does not follow a pruned width, so the width stays (the MLP hidden
    layer still prunes), and the model still runs."""
    torch.manual_seed(0)
    m, x = PatchFold(literal=True).eval(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = prunekit.prune_(m, x, ratio=0.5, keep_outputs=("conv_out",))
    assert r.verified["checked"] == "exact"
    assert (m.conv_in.out_channels, m.fc1.out_features) == (24, 16)
    assert any(b.tensor == "conv_in.weight" and b.dim == 0 for b in r.blocked)  # kept, with its reason
