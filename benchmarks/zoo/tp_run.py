"""Torch-Pruning 1.6.1 on a zoo model: MagnitudePruner (L2), ratio 0.5, local, heads' outputs kept.

Attention layers get Torch-Pruning's ``num_heads`` dict (as in its timm/HF examples: q/k/v projections or
timm's fused ``qkv``), and after ``step()`` the modules' head-size attributes are rewritten from the pruned
projection widths, as those examples do. Everything else is Torch-Pruning's defaults.
"""
from __future__ import annotations

from torch import nn

_QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"),
              ("query_proj", "key_proj", "value_proj"), ("q", "k", "v"))
_HEADS_ATTRS = ("num_heads", "num_attention_heads", "n_heads")
_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim", "head_size", "dim_head")
_ALL_HEAD_ATTRS = ("all_head_size", "inner_dim", "attn_dim")


def _heads_of(m: nn.Module) -> int | None:
    for a in _HEADS_ATTRS:
        v = getattr(m, a, None)
        if isinstance(v, int) and v > 0:
            return v
    cfg = getattr(m, "config", None)
    v = getattr(cfg, "num_attention_heads", None)
    return v if isinstance(v, int) else None


def _kv_heads_of(m: nn.Module, heads: int) -> int:
    for a in ("num_key_value_heads", "num_kv_heads"):
        v = getattr(m, a, None)
        if isinstance(v, int) and v > 0:
            return v
    cfg = getattr(m, "config", None)
    v = getattr(cfg, "num_key_value_heads", None)
    return v if isinstance(v, int) and v > 0 else heads


def attention_layers(model: nn.Module) -> list[tuple[nn.Module, list[nn.Linear], int, int]]:
    """(attention module, its q/k/v or fused qkv Linears, heads, kv heads) for every attention found."""
    found = []
    for m in model.modules():
        heads = _heads_of(m)
        if heads is None:
            continue
        if isinstance(getattr(m, "qkv", None), nn.Linear):
            found.append((m, [m.qkv], heads, heads))
            continue
        for names in _QKV_NAMES:
            lins = [getattr(m, n, None) for n in names]
            if all(isinstance(li, nn.Linear) for li in lins):
                found.append((m, lins, heads, _kv_heads_of(m, heads)))
                break
    return found


def _fix_attributes(attn: list[tuple[nn.Module, list[nn.Linear], int, int]], pruner) -> None:
    """Rewrite head sizes from the pruned projection widths (Torch-Pruning's examples do this by hand)."""
    for m, lins, heads, _kv in attn:
        heads_now = pruner.num_heads.get(lins[0], heads) if hasattr(pruner, "num_heads") else heads
        width = lins[0].out_features // (3 if len(lins) == 1 else 1)  # fused qkv: q, k and v stacked
        for a in _HEADS_ATTRS:
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, heads_now)
        for a in _HEAD_DIM_ATTRS:
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, width // heads_now)
        for a in _ALL_HEAD_ATTRS:
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, width)


def prune_tp(model: nn.Module, inputs: tuple, heads: list[str], with_heads: bool = True) -> None:
    """Prune ``model`` in place with Torch-Pruning (timed by the caller); ``with_heads=False`` passes no
    ``num_heads`` (the caller's second try where the attention-aware one raises)."""
    import torch_pruning as tp

    ignored = [model.get_submodule(h) for h in heads]
    attn = attention_layers(model) if with_heads else []
    num_heads = {}
    for _m, lins, h, kv in attn:
        if len(lins) == 1:
            num_heads[lins[0]] = h
        else:
            num_heads[lins[0]], num_heads[lins[1]], num_heads[lins[2]] = h, kv, kv
    example = inputs[0] if len(inputs) == 1 else inputs
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=ignored, global_pruning=False,
                                       round_to=None, num_heads=num_heads)
    pruner.step()
    _fix_attributes(attn, pruner)
