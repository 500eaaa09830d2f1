"""Residual width of decoder LLMs: fold norm scales into the adjacent Linears (exact), rotate the
residual stream by the PCA of its calibration states (exact, SliceGPT-style; RMSNorm families) and
delete its least-used directions (approximate: the deleted directions' share of the stream is gone).

- :func:`fold_norms_`: every block's pre-attention and pre-MLP norm ``y = g * norm(x) (+ b)`` becomes
  ``norm(x)`` with ``g`` folded into the columns of the Linears reading ``y`` (and ``b`` into their
  biases); with ``final=True`` the final norm is folded into the LM head (untying it from the
  embedding first, reported). Checked: the logits must not change (relative 1e-5), else the model is
  restored and :class:`~prunekit.errors.VerificationError` is raised.
- :func:`rotate_` (after folding, RMSNorm families): ``x -> x Q`` everywhere in the residual stream,
  ``Q`` orthogonal, so ``RMSNorm(x Q) = RMSNorm(x) Q``; checked like folding.
- :func:`slice_residual_`: keep the first ``width`` rotated directions (the principal ones).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from ..errors import VerificationError
from .structured import BLOCKS_PATH, blocks, family

# family -> (norm attribute in the block, [Linear paths in the block reading its output]) per norm
NORMS = {
    "llama": [("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
              ("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"])],
    "phi3": [("input_layernorm", ["self_attn.qkv_proj"]), ("post_attention_layernorm", ["mlp.gate_up_proj"])],
    "gpt2": [("ln_1", ["attn.c_attn"]), ("ln_2", ["mlp.c_fc"])],
    "opt": [("self_attn_layer_norm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
            ("final_layer_norm", ["fc1"])],
    "gpt_neox": [("input_layernorm", ["attention.query_key_value"]), ("post_attention_layernorm", ["mlp.dense_h_to_4h"])],
}
NORMS["mistral"] = NORMS["qwen2"] = NORMS["llama"]
# Linears writing into the residual stream, per block
WRITERS = {"llama": ["self_attn.o_proj", "mlp.down_proj"], "phi3": ["self_attn.o_proj", "mlp.down_proj"]}
WRITERS["mistral"] = WRITERS["qwen2"] = WRITERS["llama"]
FINAL_NORM = {"llama": "model.norm", "mistral": "model.norm", "qwen2": "model.norm", "phi3": "model.norm",
              "gpt2": "transformer.ln_f", "opt": "model.decoder.final_layer_norm", "gpt_neox": "gpt_neox.final_layer_norm"}


def _as_out_in(mod: nn.Module) -> torch.Tensor:
    """A Linear-like weight viewed as [out, in] (GPT-2 Conv1D stores [in, out])."""
    return mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.double()


class _Checked:
    """Snapshot the model's parameters; compare logits after a change, restore on failure."""

    def __init__(self, model: nn.Module, ids: torch.Tensor | None, rtol: float, what: str) -> None:
        self.model, self.rtol, self.what = model, rtol, what
        self.ids = ids if ids is not None else torch.randint(0, model.config.vocab_size, (1, 16),
                                                             generator=torch.Generator().manual_seed(0))
        self.saved = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.modules = {n: (m, dict(m._parameters)) for n, m in model.named_modules()}
        self.reference = _logits(model, self.ids)
        self.error = math.nan

    def finish(self) -> float:
        out = _logits(self.model, self.ids)
        err = float((out - self.reference).abs().max() / self.reference.abs().max().clamp_min(1e-12)) \
            if out.shape == self.reference.shape else math.inf
        if not err <= self.rtol:
            self.restore()
            raise VerificationError(f"llm.fold: {self.what} changed the logits by {err:.3g} (tolerance "
                                    f"{self.rtol:.0e}); the model was restored", err)
        self.error = err
        return err

    def restore(self) -> None:
        for n, (m, params) in self.modules.items():
            m._parameters.clear()
            m._parameters.update(params)
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in self.saved and p.shape == self.saved[n].shape:
                    p.copy_(self.saved[n])


@dataclass
class FoldResult:
    folded: list[str] = field(default_factory=list)   # norm paths now with unit scale (and no shift)
    untied: bool = False
    error: float = 0.0


def _fold_one(model: nn.Module, norm: nn.Module, readers: list[nn.Module], scale: torch.Tensor) -> None:
    """``readers`` read ``scale * n(x) + shift``: move the scale into their columns and the shift into
    their biases; the norm keeps ``n`` only."""
    shift = getattr(norm, "bias", None)
    with torch.no_grad():
        for r in readers:
            w = _as_out_in(r)                          # (out, in) view
            if shift is not None:
                add = w.double() @ shift.double()      # (out,)
                if r.bias is None:
                    r.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
                r.bias.add_(add.to(w.dtype))
            w.mul_(scale.to(w.dtype)[None, :])
        norm.weight.fill_(1.0)
        if shift is not None:
            shift.zero_()


def fold_norms_(model: nn.Module, *, final: bool = False, example_ids: torch.Tensor | None = None,
                scales: Mapping[str, torch.Tensor] | None = None, rtol: float = 1e-5) -> FoldResult:
    """Fold every block norm (and with ``final`` the final norm) into the Linears after it, checked
    (see the module doc). ``scales`` (norm path -> vector) replaces the scale folded for a norm (tests
    use it as a negative control: a wrong scale must be caught)."""
    fam = family(model)
    base = BLOCKS_PATH[fam]
    if fam == "opt" and not getattr(model.config, "do_layer_norm_before", True):
        raise NotImplementedError("llm.fold: OPT with do_layer_norm_before=False normalizes after the residual "
                                  "add; its norms do not feed the next Linears directly")
    check = _Checked(model, example_ids, rtol, "folding the norm scales")
    res = FoldResult()
    try:
        for i, block in enumerate(blocks(model)):
            for norm_name, readers in NORMS[fam]:
                norm = block.get_submodule(norm_name)
                path = f"{base}.{i}.{norm_name}"
                scale = (scales or {}).get(path, norm.weight.detach().clone())
                _fold_one(model, norm, [block.get_submodule(r) for r in readers], scale)
                res.folded.append(path)
        if final:
            head = model.get_output_embeddings()
            if head.weight is model.get_input_embeddings().weight:
                head.weight = nn.Parameter(head.weight.detach().clone())
                model.config.tie_word_embeddings = False
                res.untied = True
            norm = model.get_submodule(FINAL_NORM[fam])
            _fold_one(model, norm, [head], (scales or {}).get(FINAL_NORM[fam], norm.weight.detach().clone()))
            res.folded.append(FINAL_NORM[fam])
        res.error = check.finish()
    except BaseException:
        if math.isnan(check.error):
            check.restore()
            if res.untied:
                model.config.tie_word_embeddings = True
                model.tie_weights()
        raise
    return res


def residual_covariance(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """``sum x^T x`` over every token of every block's input and the final norm's input ([d, d], float64)."""
    fam = family(model)
    d = model.get_input_embeddings().weight.shape[1]
    cov = torch.zeros(d, d, dtype=torch.float64)

    def add(m, args):
        x = args[0].detach().reshape(-1, d).double()   # (tokens, d)
        cov.add_(x.t() @ x)
    mods = [*(b for b in blocks(model)), model.get_submodule(FINAL_NORM[fam])]
    handles = [m.register_forward_pre_hook(add) for m in mods]
    try:
        with torch.no_grad():
            for w in windows:
                model(input_ids=w[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return cov


def rotate_(model: nn.Module, q: torch.Tensor, *, example_ids: torch.Tensor | None = None, rtol: float = 1e-4) -> float:
    """Rotate the residual stream by the orthogonal ``q`` [d, d] (after :func:`fold_norms_` with
    ``final=True``; RMSNorm families only), checked exact. Returns the relative logits error."""
    fam = family(model)
    if fam not in WRITERS:
        raise NotImplementedError(f"llm.fold.rotate_: {fam} uses LayerNorm, which is not rotation invariant "
                                  "(mean subtraction); rotation is implemented for RMSNorm families: "
                                  f"{sorted(WRITERS)}")
    for i, b in enumerate(blocks(model)):
        for norm_name, _ in NORMS[fam]:
            if not torch.all(b.get_submodule(norm_name).weight == 1):
                raise ValueError(f"llm.fold.rotate_: layer {i} {norm_name} has a scale; call fold_norms_(final=True) first")
    check = _Checked(model, example_ids, rtol, "the rotation")
    try:
        _rotate(model, fam, q)
        return check.finish()
    except BaseException:
        if math.isnan(check.error):
            check.restore()
        raise


def _rotate(model: nn.Module, fam: str, q: torch.Tensor) -> None:
    q = q.double()
    with torch.no_grad():
        emb = model.get_input_embeddings()
        emb.weight.copy_((emb.weight.double() @ q).to(emb.weight.dtype))           # (vocab, d) @ (d, d)
        for b in blocks(model):
            for _, readers in NORMS[fam]:
                for r in readers:
                    w = b.get_submodule(r).weight
                    w.copy_((w.double() @ q).to(w.dtype))                          # (out, d) @ (d, d)
            for wr in WRITERS[fam]:
                m = b.get_submodule(wr)
                m.weight.copy_((q.t() @ m.weight.double()).to(m.weight.dtype))     # (d, d) @ (d, in)
                if m.bias is not None:
                    m.bias.copy_((q.t() @ m.bias.double()).to(m.bias.dtype))
        head = model.get_output_embeddings()
        head.weight.copy_((head.weight.double() @ q).to(head.weight.dtype))


def pca_rotation(cov: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of ``cov`` as columns, largest eigenvalue first ([d, d], orthogonal)."""
    vals, vecs = torch.linalg.eigh(cov)
    return vecs[:, torch.argsort(vals, descending=True)]


def slice_residual_(model: nn.Module, width: int) -> None:
    """Keep the first ``width`` directions of the (rotated) residual stream in every tensor that reads or
    writes it; the norms then average over ``width`` dims, so their unit scale becomes
    ``sqrt(d / width)`` (the stream's norm is assumed kept by the principal directions)."""
    fam = family(model)
    emb = model.get_input_embeddings()
    d = emb.weight.shape[1]
    if not 0 < width < d:
        raise ValueError(f"llm.fold.slice_residual_: width must be in (0, {d}), not {width}")
    keep = slice(0, width)
    with torch.no_grad():
        emb.weight = nn.Parameter(emb.weight[:, keep].contiguous())
        emb.embedding_dim = width
        norms = [model.get_submodule(FINAL_NORM[fam])]
        for b in blocks(model):
            for norm_name, readers in NORMS[fam]:
                norms.append(b.get_submodule(norm_name))
                for r in readers:
                    m = b.get_submodule(r)
                    m.weight = nn.Parameter(m.weight[:, keep].contiguous())
                    m.in_features = width
            for wr in WRITERS[fam]:
                m = b.get_submodule(wr)
                m.weight = nn.Parameter(m.weight[keep].contiguous())
                m.out_features = width
                if m.bias is not None:
                    m.bias = nn.Parameter(m.bias[keep].contiguous())
        for n in norms:
            n.weight = nn.Parameter(torch.full((width,), math.sqrt(d / width), dtype=n.weight.dtype))
            if hasattr(n, "hidden_size"):
                n.hidden_size = width
        head = model.get_output_embeddings()
        head.weight = nn.Parameter(head.weight[:, keep].contiguous())
        head.in_features = width
