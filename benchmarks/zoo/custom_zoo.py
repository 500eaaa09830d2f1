"""Small hand-written modules, one per pattern prunekit must prune through (issue 13, item 4 and 3)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .spec import Built, Spec

C = 16


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _ConvHead(nn.Module):
    def __init__(self, width: int = C):
        super().__init__()
        self.stem = _cbr(3, width)
        self.head = nn.Linear(width, 10)

    def pool_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (B, C, H, W) -> (B, C)


class CalledTwice(_ConvHead):
    """One block module object applied twice in a row."""

    def __init__(self):
        super().__init__()
        self.block = _cbr(C, C)

    def forward(self, x):
        return self.pool_head(self.block(self.block(self.stem(x))))


class PartialResidual(_ConvHead):
    """A residual add over the first half of the channels only."""

    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(_cbr(C // 2, C), nn.Conv2d(C, C // 2, 1))

    def forward(self, x):
        x = self.stem(x)
        a, b = x[:, : C // 2], x[:, C // 2:]
        return self.pool_head(torch.cat([a + self.branch(a), b], 1))


class IndexPermutation(_ConvHead):
    """Channels reordered by an index tensor (a channel shuffle by gather)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("perm", torch.randperm(C))
        self.conv = _cbr(C, C)

    def forward(self, x):
        return self.pool_head(self.conv(self.stem(x)[:, self.perm]))


class LayerScale(_ConvHead):
    """PoolFormer's layer scale: ``x + scale.view(C, 1, 1) * branch(x)``."""

    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(_cbr(C, 2 * C), nn.Conv2d(2 * C, C, 1))
        self.scale = nn.Parameter(torch.rand(C) + 0.5)

    def forward(self, x):
        x = self.stem(x)
        return self.pool_head(x + self.scale.view(C, 1, 1) * self.branch(x))  # (C,) -> (C, 1, 1)


class ViewAfterPermute(_ConvHead):
    """CoAtNet-style channels-last MLP: permute, then view (B, H*W, C), Linear, and back."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(C, 2 * C), nn.Linear(2 * C, C)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        t = x.permute(0, 2, 3, 1).contiguous().view(b, h * w, c)  # (B, C, H, W) -> (B, H*W, C)
        t = self.fc2(F.gelu(self.fc1(t)))
        x = x + t.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, H*W, C) -> (B, C, H, W)
        return self.pool_head(x)


class FusedQKVAttention(nn.Module):
    """timm's Attention: qkv Linear -> reshape(B, N, 3, H, D) -> permute -> unbind -> SDPA -> proj."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, D)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))  # -> (B, N, H*D)


class _Block(nn.Module):
    def __init__(self, dim: int, attn: nn.Module):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), attn, nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FusedQKVViT(nn.Module):
    """A two-block ViT with timm-style fused-qkv attention."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(*[_Block(dim, FusedQKVAttention(dim, heads)) for _ in range(2)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
        return self.head(self.norm(self.blocks(t)).mean(1))


class WindowAttention(nn.Module):
    """Swin-style: (B, H, W, C) split into w x w windows, fused-qkv attention inside each, merged back."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.window, self.attn = window, FusedQKVAttention(dim, heads)

    def forward(self, x):
        b, h, w, c = x.shape
        s = self.window
        win = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)  # (B*nW, s*s, C)
        win = self.attn(win)
        return win.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)  # -> (B, H, W, C)


class WindowedViT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, window: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 2, 2)
        self.blocks = nn.Sequential(*[_Block(dim, WindowAttention(dim, heads, window)) for _ in range(2)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        t = self.patch(x).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        return self.head(self.norm(self.blocks(t)).mean((1, 2)))


class TiedLM(nn.Module):
    """Embedding tied to the output projection (lm_head.weight is embed.weight)."""

    def __init__(self, vocab: int = 50, dim: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        return self.lm_head(h + self.mlp(h))


class SharedParameter(_ConvHead):
    """One Parameter read by two modules' forwards (a shared 1x1 conv kernel via F.conv2d)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(C, C, 1, 1) * 0.3)
        self.mid = _cbr(C, C)

    def forward(self, x):
        x = F.relu(F.conv2d(self.stem(x), self.weight))
        return self.pool_head(F.conv2d(self.mid(x), self.weight))


class MeanReduction(_ConvHead):
    """Global pooling written as ``x.mean((2, 3))`` (exact: the reduction is over space, not channels)."""

    def __init__(self):
        super().__init__()
        self.conv = _cbr(C, 2 * C)
        self.head = nn.Linear(2 * C, 10)

    def forward(self, x):
        return self.head(self.conv(self.stem(x)).mean((2, 3)))  # (B, C, H, W) -> (B, C)


def _image(model_cls: type, side: int = 16) -> Callable[[], Built]:
    def build() -> Built:
        torch.manual_seed(0)
        model = model_cls().eval()
        return Built(model, (torch.randn(2, 3, side, side),), ["head"])
    return build


def _tied() -> Built:
    torch.manual_seed(0)
    return Built(TiedLM().eval(), (torch.randint(0, 50, (2, 8)),), ["lm_head"])


_BUILDERS: dict[str, Callable[[], Built]] = {
    "custom_called_twice": _image(CalledTwice),
    "custom_partial_residual": _image(PartialResidual),
    "custom_index_permutation": _image(IndexPermutation),
    "custom_layer_scale": _image(LayerScale),
    "custom_view_after_permute": _image(ViewAfterPermute),
    "custom_fused_qkv_attention": _image(FusedQKVViT),
    "custom_windowed_attention": _image(WindowedViT),
    "custom_tied_embedding": _tied,
    "custom_shared_parameter": _image(SharedParameter),
    "custom_mean_reduction": _image(MeanReduction),
}

SPECS: list[Spec] = [Spec(name, "custom", b) for name, b in _BUILDERS.items()]
