"""Where the parts of a Hugging Face decoder LLM live: its blocks, embeddings, final norm, head and
rotary embedding, and the Linear layers inside each block, per model family.

Families: llama, mistral, qwen2, phi3, gpt2, opt, gpt_neox (keyed by ``config.model_type``).
GPT-2's projections are ``Conv1D`` layers whose weight is stored ``[in, out]``; :func:`weight_of`
and :func:`set_weight` read and write every Linear-like layer as ``[out, in]``.

>>> lay = layout(model)                               # doctest: +SKIP
>>> lay.family, lay.blocks_path, len(lay.blocks)      # doctest: +SKIP
('llama', 'model.layers', 30)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FamilySpec:
    """Module paths of one family (relative to the causal-LM model) and the order in which the
    block's Linear layers read each other's outputs (``sequential``: a list of stages, each a tuple
    of Linear names inside the block that read the same input)."""

    blocks: str
    embed: tuple[str, ...]
    final_norm: str | None
    lm_head: str
    rotary: str | None
    sequential: tuple[tuple[str, ...], ...]


_LLAMA = FamilySpec(blocks="model.layers", embed=("model.embed_tokens",), final_norm="model.norm",
                    lm_head="lm_head", rotary="model.rotary_emb",
                    sequential=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                                ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)))

FAMILIES: dict[str, FamilySpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "phi3": FamilySpec(blocks="model.layers", embed=("model.embed_tokens",), final_norm="model.norm",
                       lm_head="lm_head", rotary="model.rotary_emb",
                       sequential=(("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",),
                                   ("mlp.down_proj",))),
    "gpt2": FamilySpec(blocks="transformer.h", embed=("transformer.wte", "transformer.wpe"),
                       final_norm="transformer.ln_f", lm_head="lm_head", rotary=None,
                       sequential=(("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",))),
    "opt": FamilySpec(blocks="model.decoder.layers",
                      embed=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
                      final_norm="model.decoder.final_layer_norm", lm_head="lm_head", rotary=None,
                      sequential=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                  ("self_attn.out_proj",), ("fc1",), ("fc2",))),
    "gpt_neox": FamilySpec(blocks="gpt_neox.layers", embed=("gpt_neox.embed_in",),
                           final_norm="gpt_neox.final_layer_norm", lm_head="embed_out", rotary="gpt_neox.rotary_emb",
                           sequential=(("attention.query_key_value",), ("attention.dense",),
                                       ("mlp.dense_h_to_4h",), ("mlp.dense_4h_to_h",))),
}


@dataclass(frozen=True)
class DecoderLayout:
    """Where a decoder LLM's parts are: ``blocks`` (the ModuleList at ``blocks_path``), the modules
    run before block 0 (``embed``), the final norm, the LM head and the model-level rotary embedding
    (paths, ``None`` where the family has none)."""

    family: str
    blocks: nn.ModuleList
    blocks_path: str
    embed: tuple[str, ...]
    final_norm: str | None
    lm_head: str
    rotary: str | None
    sequential: tuple[tuple[str, ...], ...]


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers absent: no GPT-2 style layers can exist
        return None
    return Conv1D


def is_linear(module: nn.Module) -> bool:
    """A ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    conv1d = _conv1d_type()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def _get(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as e:
        raise ValueError(f"llm.arch: {type(model).__name__} has no module {path!r}") from e


def family_of(model: nn.Module) -> str:
    """The family key (``config.model_type``); a clear error for models outside :data:`FAMILIES`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"llm.arch: unsupported model {type(model).__name__} (model_type={model_type!r}); "
                         f"supported families: {sorted(FAMILIES)}")
    return model_type


def layout(model: nn.Module) -> DecoderLayout:
    """The :class:`DecoderLayout` of a Hugging Face causal LM of a supported family."""
    family = family_of(model)
    spec = FAMILIES[family]
    blocks = _get(model, spec.blocks)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"llm.arch: {spec.blocks} of {type(model).__name__} is a {type(blocks).__name__}, "
                         f"not a ModuleList")
    embed = tuple(p for p in spec.embed if _has(model, p))
    for path in (spec.lm_head,) + embed:
        _get(model, path)
    rotary = spec.rotary if spec.rotary and _has(model, spec.rotary) else None
    final_norm = spec.final_norm if spec.final_norm and _has(model, spec.final_norm) else None
    return DecoderLayout(family=family, blocks=blocks, blocks_path=spec.blocks, embed=embed, final_norm=final_norm,
                         lm_head=spec.lm_head, rotary=rotary, sequential=spec.sequential)


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """Every Linear-like layer inside ``block`` (``nn.Linear`` or GPT-2 ``Conv1D``), by path in the block."""
    return {name: m for name, m in block.named_modules() if name and is_linear(m)}


def weight_of(module: nn.Module) -> torch.Tensor:
    """The layer's weight as ``[out, in]`` (a view: GPT-2's ``Conv1D`` stores ``[in, out]``)."""
    if isinstance(module, nn.Linear):
        return module.weight.data
    if is_linear(module):
        return module.weight.data.t()  # Conv1D: (in, out) -> (out, in)
    raise TypeError(f"llm.arch: {type(module).__name__} is not a Linear or Conv1D")


def set_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Write ``weight`` (``[out, in]``) into the layer in place, in the layer's dtype and layout."""
    target = weight_of(module)
    if target.shape != weight.shape:
        raise ValueError(f"llm.arch: weight of shape {tuple(weight.shape)} for a layer of shape {tuple(target.shape)}")
    target.copy_(weight.to(target.dtype))
