"""Parameter pruning: unstructured and N:M masks, masks as parametrizations, finalize, and
compressed storage so the saving shows up on disk."""
from .masks import nm_mask, sparsity_of, threshold_masks, unstructured_masks, zero_masks
from .parametrize import WeightMask, apply_masks, finalize, load_state_dict_, masks_of
from .storage import load_sparse, save_sparse
from .api import (GradualPruner, SparsityConfig, SparsityResult, compute_masks, mark_zeros_, nm_misfits, prunable_weights,
                  sparsify_)

__all__ = ["GradualPruner", "SparsityConfig", "SparsityResult", "compute_masks", "mark_zeros_", "prunable_weights",
           "sparsify_", "WeightMask", "apply_masks", "finalize", "load_sparse", "load_state_dict_", "masks_of",
           "nm_misfits", "nm_mask", "save_sparse",
           "sparsity_of", "threshold_masks", "unstructured_masks", "zero_masks"]
