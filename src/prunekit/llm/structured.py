"""Structured width pruning of decoder LLMs: attention heads (whole KV groups under GQA, or the
same number of query heads inside every group) and MLP neurons, cut with a prunekit :class:`Plan`.

The unit layout of each supported family (which rows and columns of which tensors make a head or a
neuron, fused projections included) is written out in :func:`layer_units`; a cut is a plain
:class:`~prunekit.plan.Plan` (tensor slices by ``state_dict`` name + module attributes), applied hard
by :func:`~prunekit.plan.apply_plan` and verified inside the same transaction: the pruned model's
logits must equal the logits of the unpruned model with the removed slices zeroed (exact for heads
and neurons), else the model is restored and :class:`~prunekit.errors.VerificationError` is raised.

>>> units = model_units(model)                                    # doctest: +SKIP
>>> cuts = {0: LayerCut(neurons=(3, 7)), 1: LayerCut(kv_groups=(1,))}  # doctest: +SKIP
>>> result = cut_(model, cuts, example_ids=torch.randint(0, 100, (1, 16)))  # doctest: +SKIP
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import PlanError, VerificationError
from ..plan import Plan, ZeroedSlices, apply_plan
from .arch import FAMILIES

# where each family's decoder blocks live: read from arch.FAMILIES, the one table of family layouts
BLOCKS_PATH = {fam: spec.blocks for fam, spec in FAMILIES.items()}


@dataclass(frozen=True)
class Slot:
    """Where channel ``c`` of a unit space lives in one tensor: index
    ``offset + (c // block) * stride + c % block`` along ``dim`` (``block = stride = 1``: ``offset + c``)."""

    tensor: str
    dim: int
    offset: int = 0
    block: int = 1
    stride: int = 1

    def indices(self, channels: list[int]) -> list[int]:
        return [self.offset + (c // self.block) * self.stride + c % self.block for c in channels]


@dataclass
class Space:
    """One prunable channel space of a layer (query channels, key/value channels or MLP neurons):
    its size, the tensor slots it owns, and the module whose input carries its activations."""

    size: int
    slots: list[Slot]
    out_module: str | None = None     # module path; its input's last dim is this space (None: kv space)
    out_weight: str | None = None     # state_dict name of the output projection weight
    out_transposed: bool = False      # GPT-2 Conv1D stores [in, out]


@dataclass
class LayerUnits:
    """The structured units of one decoder layer."""

    index: int
    prefix: str
    head_dim: int
    n_q: int
    n_kv: int
    q: Space
    kv: Space
    mlp: Space
    attrs: Callable[[int, int, int], list[tuple[str, str, int]]]   # (kept_q, kept_kv, kept_neurons) -> attrs
    config_fix: Callable[[nn.Module, int, int], None] | None = None  # per-layer config values (phi3)

    @property
    def rep(self) -> int:
        return self.n_q // self.n_kv


@dataclass(frozen=True)
class LayerCut:
    """What to remove from one layer: query heads, whole KV groups (their query heads go with them) and
    MLP neurons, as indices into the layer's current heads/groups/neurons."""

    q_heads: tuple[int, ...] = ()
    kv_groups: tuple[int, ...] = ()
    neurons: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, list[int]]:
        return {"q_heads": list(self.q_heads), "kv_groups": list(self.kv_groups), "neurons": list(self.neurons)}


def family(model: nn.Module) -> str:
    """The model's family (``config.model_type``); a clear error for one this module does not know."""
    fam = getattr(getattr(model, "config", None), "model_type", None)
    if fam not in BLOCKS_PATH:
        raise NotImplementedError(f"llm.structured: no unit layout for {type(model).__name__} "
                                  f"(model_type {fam!r}); known: {sorted(BLOCKS_PATH)}")
    return fam


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(BLOCKS_PATH[family(model)])


def _lin(prefix: str, mod: nn.Module, dim: int, offset: int = 0, block: int = 1, stride: int = 1) -> list[Slot]:
    """Slots of a Linear's weight along ``dim`` (0 = output rows, 1 = input columns) and its bias for rows."""
    out = [Slot(f"{prefix}.weight", dim, offset, block, stride)]
    if dim == 0 and getattr(mod, "bias", None) is not None:
        out.append(Slot(f"{prefix}.bias", 0, offset, block, stride))
    return out


def _conv1d(prefix: str, mod: nn.Module, out_axis: bool, offset: int = 0) -> list[Slot]:
    """GPT-2 Conv1D (weight [in, out]): output channels are dim 1 (+ bias), input channels dim 0."""
    if out_axis:
        return [Slot(f"{prefix}.weight", 1, offset), Slot(f"{prefix}.bias", 0, offset)]
    return [Slot(f"{prefix}.weight", 0, offset)]


def layer_units(model: nn.Module, i: int) -> LayerUnits:
    """The unit layout of decoder layer ``i`` (see the module doc)."""
    fam = family(model)
    base = BLOCKS_PATH[fam]
    p = f"{base}.{i}"
    layer = blocks(model)[i]
    if fam in ("llama", "mistral", "qwen2"):
        a, m = layer.self_attn, layer.mlp
        hd = a.head_dim
        n_q, n_kv = a.q_proj.out_features // hd, a.k_proj.out_features // hd
        q = Space(n_q * hd, _lin(f"{p}.self_attn.q_proj", a.q_proj, 0) + _lin(f"{p}.self_attn.o_proj", a.o_proj, 1),
                  f"{p}.self_attn.o_proj", f"{p}.self_attn.o_proj.weight")
        kv = Space(n_kv * hd, _lin(f"{p}.self_attn.k_proj", a.k_proj, 0) + _lin(f"{p}.self_attn.v_proj", a.v_proj, 0))
        mlp = Space(m.down_proj.in_features, _lin(f"{p}.mlp.gate_proj", m.gate_proj, 0)
                    + _lin(f"{p}.mlp.up_proj", m.up_proj, 0) + _lin(f"{p}.mlp.down_proj", m.down_proj, 1),
                    f"{p}.mlp.down_proj", f"{p}.mlp.down_proj.weight")

        def attrs(kq, kkv, kn):
            return [(f"{p}.self_attn", "num_key_value_groups", kq // kkv), (f"{p}.mlp", "intermediate_size", kn)]
        return LayerUnits(i, p, hd, n_q, n_kv, q, kv, mlp, attrs)
    if fam == "phi3":
        a, m = layer.self_attn, layer.mlp
        hd = a.head_dim
        n_kv = a.num_key_value_heads
        n_q = a.o_proj.in_features // hd
        inter = m.down_proj.in_features
        q = Space(n_q * hd, _lin(f"{p}.self_attn.qkv_proj", a.qkv_proj, 0) + _lin(f"{p}.self_attn.o_proj", a.o_proj, 1),
                  f"{p}.self_attn.o_proj", f"{p}.self_attn.o_proj.weight")
        kv = Space(n_kv * hd, _lin(f"{p}.self_attn.qkv_proj", a.qkv_proj, 0, n_q * hd)
                   + _lin(f"{p}.self_attn.qkv_proj", a.qkv_proj, 0, n_q * hd + n_kv * hd))
        mlp = Space(inter, _lin(f"{p}.mlp.gate_up_proj", m.gate_up_proj, 0)
                    + _lin(f"{p}.mlp.gate_up_proj", m.gate_up_proj, 0, inter) + _lin(f"{p}.mlp.down_proj", m.down_proj, 1),
                    f"{p}.mlp.down_proj", f"{p}.mlp.down_proj.weight")

        def attrs(kq, kkv, kn):
            return [(f"{p}.self_attn", "num_key_value_heads", kkv), (f"{p}.self_attn", "num_key_value_groups", kq // kkv)]

        def config_fix(mdl, kq, kkv):  # Phi3Attention reads config.num_attention_heads in forward
            attn = blocks(mdl)[i].self_attn
            attn.config.num_attention_heads = kq
            attn.config.num_key_value_heads = kkv
        return LayerUnits(i, p, hd, n_q, n_kv, q, kv, mlp, attrs, config_fix)
    if fam == "gpt2":
        a, m = layer.attn, layer.mlp
        hd = a.head_dim
        split = a.split_size
        n = split // hd
        q = Space(n * hd, _conv1d(f"{p}.attn.c_attn", a.c_attn, True) + _conv1d(f"{p}.attn.c_proj", a.c_proj, False),
                  f"{p}.attn.c_proj", f"{p}.attn.c_proj.weight", True)
        kv = Space(n * hd, _conv1d(f"{p}.attn.c_attn", a.c_attn, True, split)
                   + _conv1d(f"{p}.attn.c_attn", a.c_attn, True, 2 * split))
        mlp = Space(m.c_proj.weight.shape[0], _conv1d(f"{p}.mlp.c_fc", m.c_fc, True) + _conv1d(f"{p}.mlp.c_proj", m.c_proj, False),
                    f"{p}.mlp.c_proj", f"{p}.mlp.c_proj.weight", True)

        def attrs(kq, kkv, kn):
            return [(f"{p}.attn", "num_heads", kq), (f"{p}.attn", "split_size", kq * hd)]
        return LayerUnits(i, p, hd, n, n, q, kv, mlp, attrs)
    if fam == "opt":
        a = layer.self_attn
        hd = a.head_dim
        n = a.q_proj.out_features // hd
        q = Space(n * hd, _lin(f"{p}.self_attn.q_proj", a.q_proj, 0) + _lin(f"{p}.self_attn.out_proj", a.out_proj, 1),
                  f"{p}.self_attn.out_proj", f"{p}.self_attn.out_proj.weight")
        kv = Space(n * hd, _lin(f"{p}.self_attn.k_proj", a.k_proj, 0) + _lin(f"{p}.self_attn.v_proj", a.v_proj, 0))
        mlp = Space(layer.fc2.in_features, _lin(f"{p}.fc1", layer.fc1, 0) + _lin(f"{p}.fc2", layer.fc2, 1),
                    f"{p}.fc2", f"{p}.fc2.weight")

        def attrs(kq, kkv, kn):
            return [(f"{p}.self_attn", "num_heads", kq)]
        return LayerUnits(i, p, hd, n, n, q, kv, mlp, attrs)
    if fam == "gpt_neox":
        a, m = layer.attention, layer.mlp
        hd = a.head_size
        n = a.dense.in_features // hd
        qkv = f"{p}.attention.query_key_value"
        # fused per head: rows [h*3hd, h*3hd+hd) are q, then k, then v (view(..., n, 3*hd) then chunk(3))
        q = Space(n * hd, _lin(qkv, a.query_key_value, 0, 0, hd, 3 * hd) + _lin(f"{p}.attention.dense", a.dense, 1),
                  f"{p}.attention.dense", f"{p}.attention.dense.weight")
        kv = Space(n * hd, _lin(qkv, a.query_key_value, 0, hd, hd, 3 * hd) + _lin(qkv, a.query_key_value, 0, 2 * hd, hd, 3 * hd))
        mlp = Space(m.dense_4h_to_h.in_features, _lin(f"{p}.mlp.dense_h_to_4h", m.dense_h_to_4h, 0)
                    + _lin(f"{p}.mlp.dense_4h_to_h", m.dense_4h_to_h, 1), f"{p}.mlp.dense_4h_to_h", f"{p}.mlp.dense_4h_to_h.weight")

        def attrs(kq, kkv, kn):
            return []
        return LayerUnits(i, p, hd, n, n, q, kv, mlp, attrs)
    raise AssertionError(fam)


def model_units(model: nn.Module) -> list[LayerUnits]:
    """:func:`layer_units` for every decoder layer."""
    return [layer_units(model, i) for i in range(len(blocks(model)))]


# -- parameter costs ---------------------------------------------------------------------

def _numel_per_channel(model: nn.Module, space: Space) -> int:
    """Parameters one channel of ``space`` owns (summed over its slots)."""
    sd = dict(model.named_parameters())
    total = 0
    for s in space.slots:
        t = sd[s.tensor]
        total += t.numel() // t.shape[s.dim]
    return total


@dataclass(frozen=True)
class UnitCosts:
    """Parameters removed by one query head (its q rows and o columns), one KV group's own k/v rows,
    and one MLP neuron, for one layer."""

    q_head: int
    kv_group: int
    neuron: int


def unit_costs(model: nn.Module, u: LayerUnits) -> UnitCosts:
    return UnitCosts(_numel_per_channel(model, u.q) * u.head_dim, _numel_per_channel(model, u.kv) * u.head_dim,
                     _numel_per_channel(model, u.mlp))


def decoder_params(model: nn.Module) -> int:
    """Parameters of the decoder blocks (embeddings, final norm and LM head not counted)."""
    return sum(p.numel() for p in blocks(model).parameters())


# -- plans -------------------------------------------------------------------------------

def _channels(heads: list[int], hd: int) -> list[int]:
    return [h * hd + c for h in heads for c in range(hd)]


def normalize_cut(u: LayerUnits, cut: LayerCut) -> tuple[list[int], list[int], list[int]]:
    """Removed (query heads, KV groups, neurons) of a layer, checked: a removed group takes its query
    heads; every kept group must keep the same number of query heads; nothing may be emptied."""
    for name, idx, n in (("q_heads", cut.q_heads, u.n_q), ("kv_groups", cut.kv_groups, u.n_kv),
                         ("neurons", cut.neurons, u.mlp.size)):
        if any(not 0 <= j < n for j in idx):
            raise PlanError(f"llm.structured: layer {u.index} {name} index out of range (size {n}): {sorted(idx)}")
    groups = sorted(set(cut.kv_groups))
    heads = set(cut.q_heads)
    for g in groups:
        heads.update(range(g * u.rep, (g + 1) * u.rep))
    # a group whose query heads all go goes whole (under plain multi-head attention a head is a group)
    groups = sorted(set(groups) | {g for g in range(u.n_kv) if all(h in heads for h in range(g * u.rep, (g + 1) * u.rep))})
    kept_per_group = {g: sum(1 for h in range(g * u.rep, (g + 1) * u.rep) if h not in heads)
                      for g in range(u.n_kv) if g not in groups}
    if not kept_per_group:
        raise PlanError(f"llm.structured: layer {u.index} would lose every KV group")
    if len(set(kept_per_group.values())) != 1 or 0 in kept_per_group.values():
        raise PlanError(f"llm.structured: layer {u.index} query heads kept per KV group differ {kept_per_group}; "
                        "grouped attention needs the same number in every kept group (or remove the whole group)")
    neurons = sorted(set(cut.neurons))
    if len(neurons) >= u.mlp.size:
        raise PlanError(f"llm.structured: layer {u.index} would lose every MLP neuron")
    return sorted(heads), groups, neurons


def make_cut_plan(model: nn.Module, cuts: Mapping[int, LayerCut], units: list[LayerUnits] | None = None) -> Plan:
    """The :class:`Plan` that removes ``cuts`` (layer index -> :class:`LayerCut`)."""
    units = units or model_units(model)
    removed: dict[str, dict[int, list[int]]] = {}
    attrs: list[tuple[str, str, int]] = []
    groups = []

    def add(space: Space, channels: list[int]) -> None:
        for s in space.slots:
            removed.setdefault(s.tensor, {}).setdefault(s.dim, []).extend(s.indices(channels))

    for i, cut in sorted(cuts.items()):
        u = units[i]
        heads, kv, neurons = normalize_cut(u, cut)
        if heads:
            add(u.q, _channels(heads, u.head_dim))
        if kv:
            add(u.kv, _channels(kv, u.head_dim))
        if neurons:
            add(u.mlp, neurons)
        if heads or kv or neurons:
            kept = (u.n_q - len(heads), u.n_kv - len(kv), u.mlp.size - len(neurons))
            mods = dict(model.named_modules())
            attrs += [a for a in u.attrs(*kept) if hasattr(mods[a[0]], a[1])]
            groups.append({"layer": i, **LayerCut(tuple(heads), tuple(kv), tuple(neurons)).to_dict()})
    removed = {n: {d: sorted(set(v)) for d, v in dims.items()} for n, dims in removed.items()}
    return Plan(removed, sorted(set(attrs)), groups, exact=True)


# -- applying, verified ------------------------------------------------------------------

@dataclass
class CutResult:
    plan: Plan
    error: float            # max |pruned - zeroed| / max |zeroed| over the example logits
    params_before: int
    params_after: int
    layers: list[dict[str, int]] = field(default_factory=list)   # kept q heads, kv groups, neurons per layer


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.detach().double()


def _private_configs(model: nn.Module, units: list[LayerUnits]) -> list[tuple[nn.Module, Any]]:
    """Give every attention that reads its config in forward (phi3) its own copy; returns the undo list."""
    undo = []
    for u in units:
        if u.config_fix is not None:
            attn = blocks(model)[u.index].self_attn
            undo.append((attn, attn.config))
            attn.config = copy.copy(attn.config)
    return undo


def cut_(model: nn.Module, cuts: Mapping[int, LayerCut], *, example_ids: torch.Tensor | None = None,
         rtol: float = 1e-4, plan: Plan | None = None) -> CutResult:
    """Remove ``cuts`` from ``model`` in place, verified (see the module doc).

    ``example_ids`` (int64 [b, T]) are the tokens the soft-vs-hard check runs on (default: 16 tokens
    from a fixed generator). ``plan`` overrides the plan made from ``cuts`` (tests use it as a
    negative control). All-or-nothing: on a failed check the model is exactly as before."""
    units = model_units(model)
    plan = plan if plan is not None else make_cut_plan(model, cuts, units)
    before = decoder_params(model)
    if plan.is_empty():
        return CutResult(plan, 0.0, before, before)
    if example_ids is None:
        g = torch.Generator().manual_seed(0)
        example_ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=g)
    was_training = model.training
    model.eval()
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    with ZeroedSlices(tensors, plan):
        reference = _logits(model, example_ids)
    kept = {}
    for i, cut in cuts.items():
        h, g, n = normalize_cut(units[i], cut)
        kept[i] = (units[i].n_q - len(h), units[i].n_kv - len(g))
    undo = _private_configs(model, units)
    err_box: dict[str, float] = {}

    def check(m: nn.Module) -> None:
        for i, (kq, kkv) in kept.items():
            if units[i].config_fix is not None:
                units[i].config_fix(m, kq, kkv)
        out = _logits(m, example_ids)
        if out.shape != reference.shape:
            raise VerificationError(f"llm.structured: logits shape {tuple(out.shape)} != {tuple(reference.shape)}", float("inf"))
        err = float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
        err_box["error"] = err
        if not err <= rtol:
            raise VerificationError(f"llm.structured: pruned logits differ from the zeroed model's by {err:.3g} "
                                    f"(tolerance {rtol:.0e}); the model was restored", err)

    try:
        apply_plan(model, plan, "hard", check=check)
    except BaseException:
        for attn, cfg in undo:
            attn.config = cfg
        raise
    finally:
        model.train(was_training)
    after = decoder_params(model)
    layers = [{"q_heads": u.n_q, "kv_groups": u.n_kv, "neurons": u.mlp.size} for u in model_units(model)]
    return CutResult(plan, err_box.get("error", 0.0), before, after, layers)
