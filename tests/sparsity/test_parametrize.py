import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.sparsity import apply_masks, finalize, masks_of, unstructured_masks


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_masked_forward_equals_zeroed_dense_and_masks_stay_out_of_checkpoints():
    m = _model()
    dense = _model()
    masks = unstructured_masks({"0.weight": m[0].weight.abs(), "2.weight": m[2].weight.abs()}, 0.75)
    apply_masks(m, masks)
    with torch.no_grad():
        dense[0].weight.mul_(masks["0.weight"])
        dense[2].weight.mul_(masks["2.weight"])
    x = torch.randn(5, 8)
    torch.testing.assert_close(m(x), dense(x))
    assert {k for k in m.state_dict() if k.endswith(".mask")} == {"0.parametrizations.weight.0.mask",
                                                                  "2.parametrizations.weight.0.mask"}
    assert set(masks_of(m)) == {"0.weight", "2.weight"}


def test_pruned_weights_stay_zero_through_training_then_finalize_is_plain():
    m = _model()
    masks = unstructured_masks({"0.weight": m[0].weight.abs()}, 0.5)
    apply_masks(m, masks)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(4, 8)).pow(2).sum().backward()
        opt.step()
    assert (m[0].weight[~masks["0.weight"]] == 0).all()
    x = torch.randn(3, 8)
    before = m(x).detach()
    finalize(m)
    assert not parametrize.is_parametrized(m[0])
    assert isinstance(m[0].weight, nn.Parameter)
    assert set(m.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    torch.testing.assert_close(m(x), before)
    assert int((m[0].weight == 0).sum()) == 64


def test_reapplying_updates_the_same_parametrization():
    m = _model()
    apply_masks(m, {"0.weight": torch.ones(16, 8, dtype=torch.bool)})
    apply_masks(m, {"0.weight": torch.zeros(16, 8, dtype=torch.bool)})
    assert len(m[0].parametrizations.weight) == 1
    assert (m[0].weight == 0).all()


def test_the_stored_original_is_zeroed_at_the_cut_and_finalize_bakes_the_mask():
    m = _model()
    mask = unstructured_masks({"0.weight": m[0].weight}, 0.5)["0.weight"]
    apply_masks(m, {"0.weight": mask})
    orig = m[0].parametrizations.weight.original
    assert (orig.detach()[~mask] == 0).all() and (orig.detach()[mask] != 0).all()
    with torch.no_grad():
        orig.add_(1.0)  # e.g. an optimizer's weight update that touches the cut positions
    finalize(m)
    assert not parametrize.is_parametrized(m[0])
    assert (m[0].weight.detach()[~mask] == 0).all() and (m[0].weight.detach()[mask] != 0).all()
