import pytest
import torch

from prunekit.sparsity import nm_mask, sparsity_of, threshold_masks, unstructured_masks, zero_masks


def test_local_removes_exactly_the_lowest_per_tensor():
    a = torch.tensor([[1.0, -5.0, 0.5, 2.0]])
    b = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    m = unstructured_masks({"a": a.abs(), "b": b.abs()}, 0.5)
    assert m["a"].tolist() == [[False, True, False, True]]
    assert m["b"].tolist() == [False, False, False, True, True, True]


def test_global_uses_one_threshold_across_tensors():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([10.0, 20.0, 30.0, 40.0])
    m = unstructured_masks({"a": a, "b": b}, 0.5, scope="global")
    assert m["a"].sum() == 0 and m["b"].all()  # all four lowest live in a


def test_ties_still_give_the_exact_count():
    m = unstructured_masks({"w": torch.zeros(10, 10)}, 0.37)
    assert int((~m["w"]).sum()) == 37


@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (4, 8), (3, 8), (1, 4)])
@pytest.mark.parametrize("shape", [(16, 32), (8, 8, 3, 3)])
def test_nm_every_block_has_exactly_n(n, m, shape):
    w = torch.randn(shape)
    mask = nm_mask(w.abs(), n, m)
    blocks = mask.reshape(shape[0], -1, m)
    assert (blocks.sum(-1) == n).all()
    # the kept ones are the largest of their block
    scores = w.abs().reshape(shape[0], -1, m)
    kept_min = torch.where(blocks, scores, torch.inf).amin(-1)
    dropped_max = torch.where(~blocks, scores, -torch.inf).amax(-1)
    assert (kept_min >= dropped_max).all()


def test_nm_rejects_bad_patterns():
    with pytest.raises(ValueError):
        nm_mask(torch.randn(4, 6), 2, 4)  # 6 is not a multiple of 4
    with pytest.raises(ValueError):
        nm_mask(torch.randn(4, 8), 4, 4)


def test_threshold_and_zero_masks():
    w = torch.tensor([0.0, 1e-4, -0.5, 2.0])
    assert threshold_masks({"w": w.abs()}, 0.1)["w"].tolist() == [False, False, True, True]
    assert zero_masks({"w": w})["w"].tolist() == [False, True, True, True]
    assert zero_masks({"w": w}, tol=1e-3)["w"].tolist() == [False, False, True, True]
    assert sparsity_of(w) == 0.25


def test_sparsity_must_stay_below_one():
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        unstructured_masks({"w": torch.ones(4)}, 1.0)
    assert unstructured_masks({"w": torch.ones(4)}, 0.0)["w"].all()


def test_tied_scores_prune_the_first_positions():
    # a stable sort: with 32 equal scores the first 8 go (torch's unstable CPU sort reorders ties past 16)
    mask = unstructured_masks({"w": torch.ones(32)}, 0.25)["w"]
    assert mask.tolist() == [False] * 8 + [True] * 24


def test_nm_needs_an_input_dimension():
    with pytest.raises(ValueError, match="needs a weight with an input dimension"):
        nm_mask(torch.ones(8), 2, 4)


def test_sparsity_of_single_elements():
    assert sparsity_of(torch.zeros(1)) == 1.0
    assert sparsity_of(torch.tensor([False])) == 1.0
    assert sparsity_of(torch.ones(1)) == 0.0
