"""Decoder LLMs: the layer-by-layer calibration pipeline, per-weight sparsity (magnitude, Wanda,
SparseGPT, N:M, OWL), perplexity, and the evaluation protocol's model and text.

Submodules: :mod:`.data` (SmolLM2 + Wikipedia windows), :mod:`.eval` (perplexity), :mod:`.arch`
(where a family's blocks and layers live), :mod:`.pipeline` (one block at a time).
"""
from .arch import DecoderLayout, block_linears, layout, set_weight, weight_of
from .eval import perplexity
from .hf import from_pretrained, save_pretrained
from .loading import OffloadedSource, ShardedSource
from .pipeline import BlockInputs, BlockSource, capture_inputs, run_blocks
from .recover import RecoverConfig, RecoverResult, recover_

__all__ = ["BlockInputs", "BlockSource", "DecoderLayout", "block_linears", "capture_inputs", "from_pretrained", "layout",
           "perplexity", "run_blocks", "save_pretrained", "set_weight", "weight_of",
           "OffloadedSource", "RecoverConfig", "RecoverResult", "ShardedSource", "recover_"]
