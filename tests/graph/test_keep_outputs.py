"""``trace(keep_outputs=...)``: Torch-Pruning's ``ignored_layers`` meaning (a module's outputs keep
their size, its inputs stay prunable) beside ``ignore=`` (every dim of the module kept)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import PruneConfig, apply_plan, make_plan, select_units, soft_hard_error, trace
from prunekit.graph.tracer import output_dims


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, D)
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))  # (B, N, H * D)


class Block(nn.Module):
    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if norm else nn.Identity()
        self.attn = Attention(dim, 2)
        self.norm2 = nn.LayerNorm(dim) if norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, class token, position embedding, two blocks, final norm, ``head``."""

    def __init__(self, dim: int = 16, classes: int = 10, norm: bool = True):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim) * 0.1)
        self.blocks = nn.Sequential(Block(dim, norm), Block(dim, norm))
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
RESIDUAL = ("patch_embed.weight", 0)


def _group_with(groups, key):
    return [g for g in groups if key in dict(g.signature)]


def _prune(model, graph, groups, ratio=0.5):
    chosen, summaries = select_units(model, groups, PruneConfig(ratio=ratio, kinds=("channel",)))
    plan = make_plan(graph, chosen, summaries)
    return plan, apply_plan(copy.deepcopy(model), plan, "hard")


@pytest.mark.parametrize("norm", [True, False])
def test_keep_outputs_prunes_the_residual_width_and_keeps_the_head(norm):
    model = TinyViT(norm=norm).eval()
    graph = trace(model, X, keep_outputs=["head"])
    residual = _group_with(graph.groups(), RESIDUAL)
    assert residual and ("head.weight", 1) in dict(residual[0].signature)
    assert residual[0].exact is (not norm)  # a LayerNorm over the residual makes it approximate
    plan, hard = _prune(model, graph, residual)
    assert hard.head.out_features == 10 and hard.head.in_features == 8
    assert hard.patch_embed.out_channels == 8 and hard.cls_token.shape[-1] == 8
    assert hard(X).shape == (2, 10)
    if not norm:  # exact: removal equals zeroing
        assert soft_hard_error(model, plan, X) <= 1e-4
        bad = copy.deepcopy(plan)
        bad.removed["head.weight"][1] = [(i + 1) % 16 for i in bad.removed["head.weight"][1]]
        assert soft_hard_error(model, bad, X) > 1e-2  # negative control: the head's inputs moved
    kept = {(b.tensor, b.dim): b for b in graph.blocked()}
    assert kept[("head.weight", 0)].op in ("keep_outputs", "output")


def test_ignore_keeps_inputs_and_outputs():
    model = TinyViT().eval()
    graph = trace(model, X, ignore=["head"])
    assert not _group_with(graph.groups(), RESIDUAL)
    kept = {(b.tensor, b.dim): b for b in graph.blocked()}
    why = kept[("patch_embed.weight", 0)]
    assert why.op == "ignore" and why.module == "head" and why.indices == list(range(16))
    assert "`head` is ignored" in str(why)
    assert _group_with(graph.groups(), ("blocks.0.mlp.0.weight", 0))  # the MLP hidden width still prunes


def test_keep_outputs_of_an_inner_layer_only_keeps_its_width():
    model = TinyViT(norm=False).eval()
    keep = trace(model, X, keep_outputs=["blocks.0.mlp.0"])
    assert not _group_with(keep.groups(), ("blocks.0.mlp.0.weight", 0))  # its outputs: kept
    assert _group_with(keep.groups(), ("blocks.1.mlp.0.weight", 0))
    assert _group_with(keep.groups(), RESIDUAL)  # its inputs: the residual width still prunes
    why = [b for b in keep.blocked() if (b.tensor, b.dim) == ("blocks.0.mlp.0.weight", 0)][0]
    assert why.op == "keep_outputs" and why.module == "blocks.0.mlp.0"
    ign = trace(model, X, ignore=["blocks.0.mlp.0"])
    assert not _group_with(ign.groups(), RESIDUAL)  # ignore: its inputs too
    groups = [g for g in keep.groups() if g.exact]
    plan, hard = _prune(model, keep, groups)
    assert hard.blocks[0].mlp[0].out_features == 32 and hard.blocks[1].mlp[0].out_features == 16
    assert soft_hard_error(model, plan, X) <= 1e-4


def test_keep_outputs_takes_module_objects_and_containers():
    model = TinyViT(norm=False).eval()
    by_object = trace(model, X, keep_outputs=[model.blocks[1].mlp])
    assert not _group_with(by_object.groups(), ("blocks.1.mlp.0.weight", 0))  # a container: its submodules
    assert _group_with(by_object.groups(), ("blocks.0.mlp.0.weight", 0))


def test_keep_outputs_names_that_match_nothing_raise():
    model = TinyViT()
    with pytest.raises(KeyError, match="keep_outputs"):
        trace(model, X, keep_outputs=["heads.head"])
    with pytest.raises(KeyError, match="keep_outputs"):
        trace(model, X, keep_outputs=[nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="no parameters"):
        trace(TinyViT(norm=False), X, keep_outputs=["norm"])  # an Identity: nothing to keep
    with pytest.raises(KeyError, match="ignored"):
        trace(model, X, ignore=["heads.head"])


def test_output_dims_per_module_type():
    assert output_dims(nn.Linear(3, 4), "weight", torch.empty(4, 3)) == (0,)
    assert output_dims(nn.Conv2d(3, 4, 1), "bias", torch.empty(4)) == (0,)
    assert output_dims(nn.ConvTranspose2d(3, 4, 1), "weight", torch.empty(3, 4, 1, 1)) == (1,)
    assert output_dims(nn.Embedding(10, 4), "weight", torch.empty(10, 4)) == (1,)
    assert output_dims(nn.LayerNorm(4), "weight", torch.empty(4)) == (0,)
    assert output_dims(nn.MultiheadAttention(4, 2, add_bias_kv=True), "bias_k", torch.empty(1, 1, 4)) == (2,)


class Decoder(nn.Module):
    """ConvTranspose and an Embedding: their output dims are not dim 0."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 12)
        self.up = nn.ConvTranspose1d(12, 8, 3)
        self.out = nn.Conv1d(8, 4, 1)

    def forward(self, tokens):
        return self.out(F.relu(self.up(self.emb(tokens).transpose(1, 2))))


def test_keep_outputs_conv_transpose_and_embedding():
    tokens = torch.randint(0, 20, (2, 6))
    model = Decoder().eval()
    free = {k for g in trace(model, tokens).groups() for k, _ in g.signature}
    assert ("up.weight", 1) in free and ("emb.weight", 1) in free
    kept = {k for g in trace(model, tokens, keep_outputs=["up", "emb"]).groups() for k, _ in g.signature}
    assert ("up.weight", 1) not in kept and ("emb.weight", 1) not in kept
