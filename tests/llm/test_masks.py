"""Keep masks: the selection path equals a stable ascending sort exactly, ties included."""
from __future__ import annotations

import pytest
import torch

from prunekit.llm.masks import prune_lowest


def _by_sort(scores, k, dim):
    keep = torch.ones_like(scores, dtype=torch.bool)
    return keep.scatter_(dim, torch.argsort(scores, dim=dim, stable=True).narrow(dim, 0, k), False)


@pytest.mark.parametrize("shape,k,dim", [((64, 48), 24, 1), ((48, 64), 1, 0), ((4096,), 2048, 0),
                                         ((32, 16, 4), 2, 2), ((8, 8), 8, 1)])
def test_selection_equals_stable_sort_with_ties(shape, k, dim):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, shape, generator=g).float()  # (many ties)
    keep = prune_lowest(scores, k, dim)
    assert torch.equal(keep, _by_sort(scores, k, dim))
    assert bool(((~keep).sum(dim) == k).all())
    if k < shape[dim]:  # negative control: ties broken towards the higher index give another mask
        flipped = _by_sort(scores.flip(dim), k, dim).flip(dim)
        assert not torch.equal(keep, flipped)


def test_nan_scores_rank_highest():
    scores = torch.tensor([[float("nan"), 1.0, 0.5, 2.0]])
    assert prune_lowest(scores, 2, dim=1).tolist() == [[True, False, False, True]]
    assert prune_lowest(scores, 0, dim=1).all()
