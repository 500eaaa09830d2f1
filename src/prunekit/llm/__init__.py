"""Decoder LLMs: the layer-by-layer calibration pipeline, per-weight sparsity (magnitude, Wanda,
SparseGPT, ADMM, N:M, OWL), structured depth with least-squares compensation, perplexity, and the evaluation protocol's model and text.

Submodules: :mod:`.data` (SmolLM2 + Wikipedia windows), :mod:`.eval` (perplexity), :mod:`.arch`
(where a family's blocks and layers live), :mod:`.pipeline` (one block at a time).
"""
from .admm import AdmmConfig
from .arch import DecoderLayout, block_linears, layout, set_weight, weight_of
from .compensate import CompensateConfig, compensate_depth_
from .eval import perplexity
from .hf import from_pretrained, save_pretrained
from .loading import OffloadedSource, ShardedSource
from .pipeline import BlockInputs, BlockSource, capture_inputs, run_blocks
from .recover import RecoverConfig, RecoverResult, recover_

__all__ = ["AdmmConfig", "CompensateConfig", "compensate_depth_", "BlockInputs", "BlockSource", "DecoderLayout", "block_linears", "capture_inputs", "from_pretrained", "layout",
           "perplexity", "run_blocks", "save_pretrained", "set_weight", "weight_of",
           "OffloadedSource", "RecoverConfig", "RecoverResult", "ShardedSource", "recover_"]
