"""Random networks for property tests and the random-network benchmark: CNN blocks with residuals,
concats, splits, grouped convs, shuffles, recurrent layers, shared modules, tied weights, layer-scale
parameters, permute/view chains, partial residuals and index permutations."""
from __future__ import annotations

import copy
import random

import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.errors import PrunekitError
from prunekit.graph.tracer import iter_tensors

BLOCKS = ("conv", "residual", "concat", "split", "grouped", "shuffle", "depthwise", "rnn", "shared", "tied",
          "layerscale", "permute", "permute_view", "partial", "partial_shape", "indexperm")


class Block(nn.Module):
    def __init__(self, kind: str, cin: int, width: int, rng: random.Random):
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.a = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            self.cout = width
        elif kind == "residual":
            self.a = nn.Sequential(nn.Conv2d(cin, width, 1), nn.ReLU(), nn.Conv2d(width, cin, 3, padding=1))
            self.cout = cin
        elif kind == "concat":
            self.a = nn.Conv2d(cin, width, 1)
            self.b = nn.Conv2d(cin, width // 2, 3, padding=1)
            self.cout = width + width // 2
        elif kind in ("split", "partial", "partial_shape"):  # halves: one transformed, or a residual over one
            self.w = width
            self.a = nn.Conv2d(cin, 2 * width, 1)
            self.b = nn.Conv2d(width, width, 3, padding=1)
            self.cout = 2 * width
        elif kind == "grouped":
            self.a = nn.Conv2d(cin, 4 * width, 1)
            self.b = nn.Conv2d(4 * width, 4 * width, 3, padding=1, groups=4)
            self.cout = 4 * width
        elif kind == "shuffle":
            self.a = nn.Conv2d(cin, 2 * width, 1)
            self.cout = 2 * width
        elif kind == "depthwise":
            self.a = nn.Conv2d(cin, cin, 3, padding=1, groups=cin)
            self.b = nn.Conv2d(cin, width, 1)
            self.cout = width
        elif kind == "rnn":
            cell = rng.choice([nn.LSTM, nn.GRU, nn.RNN])
            self.bidirectional = rng.random() < 0.5
            self.a = cell(cin, width, num_layers=rng.choice([1, 2]), batch_first=True, bidirectional=self.bidirectional)
            self.cout = width * (2 if self.bidirectional else 1)
        elif kind == "shared":  # one module object called twice
            self.a = nn.Conv2d(cin, cin, 3, padding=1)
            self.cout = cin
        elif kind == "tied":  # two convs holding one weight tensor
            self.a = nn.Conv2d(cin, width, 1)
            self.b = nn.Conv2d(cin, width, 1)
            self.b.weight = self.a.weight
            self.cout = width
        elif kind == "layerscale":
            self.a = nn.Conv2d(cin, cin, 3, padding=1)
            self.g = nn.Parameter(torch.rand(cin) + 0.5)
            self.cout = cin
        elif kind in ("permute", "permute_view"):  # channels-last linear layer
            self.a = nn.Linear(cin, width)
            self.cout = width
        elif kind == "indexperm":
            self.a = nn.Conv2d(cin, width, 1)
            self.register_buffer("perm", torch.randperm(width, generator=torch.Generator().manual_seed(rng.randrange(1000))))
            self.cout = width

    def forward(self, x):
        k = self.kind
        if k == "conv":
            return self.a(x)
        if k == "residual":
            return x + self.a(x)
        if k == "concat":
            return torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        if k == "split":
            y1, y2 = F.relu(self.a(x)).chunk(2, dim=1)
            return torch.cat([y1, self.b(y2)], dim=1)
        if k in ("partial", "partial_shape"):
            y = F.relu(self.a(x))
            w = self.w if k == "partial" else y.shape[1] // 2  # a bound fixed in code, or read from the shape
            return torch.cat([y[:, :w] + self.b(y[:, :w]), y[:, w:]], dim=1)
        if k == "grouped":
            return F.relu(self.b(F.relu(self.a(x))))
        if k == "shuffle":
            y = F.relu(self.a(x))
            b, c, h, w = y.shape
            return y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)  # channel shuffle
        if k == "depthwise":
            return F.relu(self.b(F.relu(self.a(x))))
        if k == "rnn":
            b, c, h, w = x.shape
            seq = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
            out, _ = self.a(seq)  # (B, H*W, D*width)
            return out.transpose(1, 2).reshape(b, -1, h, w)  # (B, D*width, H, W)
        if k == "shared":
            return x + self.a(F.relu(self.a(x)))
        if k == "tied":
            return F.relu(self.a(x)) + self.b(x)
        if k == "layerscale":
            return x + self.g.view(-1, 1, 1) * self.a(x)  # (C, 1, 1) broadcast over (B, C, H, W)
        if k == "permute":
            return F.relu(self.a(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C', H, W)
        if k == "permute_view":
            b, c, h, w = x.shape
            y = self.a(x.permute(0, 2, 3, 1).reshape(b, h * w, c))  # (B, H*W, C') after a permute
            return F.relu(y).transpose(1, 2).reshape(b, -1, h, w)  # (B, C', H, W)
        return F.relu(self.a(x))[:, self.perm]  # channels permuted by an index buffer


class RandomNet(nn.Module):
    def __init__(self, spec, seed: int = 0):
        super().__init__()
        rng = random.Random(seed)
        blocks, c = [nn.Conv2d(3, 8, 3, padding=1)], 8  # a stem, so the first residual stream is prunable
        for kind, width in spec:
            blk = Block(kind, c, width, rng)
            blocks.append(blk)
            c = blk.cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c * 4, 5)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(self.blocks(x), 2)
        return self.head(y.flatten(1))  # (B, C*2*2)


def random_spec(rng: random.Random, max_blocks: int = 6, kinds=BLOCKS) -> list[tuple[str, int]]:
    return [(rng.choice(kinds), rng.choice([4, 6, 8])) for _ in range(rng.randint(1, max_blocks))]


def check_network(spec, seed: int, ratio: float) -> dict:
    """Prune one random network with ``prune_`` and judge the returned model independently of
    prunekit's own check: finite outputs, and for an exact plan equal to the soft-zeroed original.
    ``status``: ``pruned`` / ``refused`` (a PrunekitError: not silent) / ``nothing`` / ``wrong``."""
    torch.manual_seed(seed)
    model = RandomNet(spec, seed).eval()
    x = torch.randn(2, 3, 6, 6)
    original = copy.deepcopy(model)
    try:
        r = prunekit.prune_(model, x, ratio=ratio)
    except PrunekitError as exc:
        return {"status": "refused", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    with torch.no_grad():
        out = [t for t in iter_tensors(model(x))]
        if r.plan.is_empty():
            ref = [t for t in iter_tensors(original(x))]
        else:
            ref = [t for t in iter_tensors(prunekit.apply_plan(copy.deepcopy(original), r.plan, "soft")(x))]
    if not all(torch.isfinite(t).all() for t in out):
        return {"status": "wrong", "reason": "non-finite outputs"}
    if r.plan.exact or r.plan.is_empty():
        err = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in zip(ref, out))
        if not err <= 1e-4:
            return {"status": "wrong", "reason": f"differs from the soft-zeroed original by {err:.3g}"}
    if r.plan.is_empty():
        return {"status": "nothing", "reason": "; ".join(str(u) for u in r.unsupported)[:300]}
    return {"status": "pruned", "exact": r.plan.exact, "macs_ratio": r.macs_ratio}
