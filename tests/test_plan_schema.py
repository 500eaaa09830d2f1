"""Plans are checked before anything changes: schema (types, dims, integer indices, attrs), the
fingerprint of the model they were made for, and the digest of their own content."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit
from prunekit import ApplyError, Plan, PlanError, apply_plan


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.bn(self.a(x))))))


class Residual(Chain):
    """The same parameter names and shapes, another structure: ``b``'s output is added to ``a``'s."""

    def forward(self, x):
        h = torch.relu(self.bn(self.a(x)))
        return self.c(torch.relu(self.b(h)) + h)


X = torch.randn(2, 3, 8, 8)


def _plan(model=None):
    model = (model or Chain()).eval()
    g = prunekit.trace(model, X)
    chosen, summaries = prunekit.select_units(model, g.groups(), prunekit.PruneConfig(ratio=0.5))
    return prunekit.make_plan(g, chosen, summaries)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _unchanged(m, before):
    return all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_a_made_plan_states_the_shapes_it_expects_and_is_sealed():
    plan = _plan()
    assert plan.shapes["a.weight"] == [8, 3, 3, 3] and plan.shapes["bn.running_mean"] == [8]
    again = Plan.from_json(plan.to_json())
    assert again.digest == plan.digest and again.to_dict() == plan.to_dict()


def test_a_plan_applies_once():
    m = Chain().eval()
    plan = _plan(m)
    apply_plan(m, plan)
    before = _state(m)
    with pytest.raises(PlanError, match="already pruned"):
        apply_plan(m, plan)  # before: 8 -> 6 -> 4 channels
    assert _unchanged(m, before)


def test_a_plan_for_another_architecture_is_refused():
    plan = _plan()
    other = nn.Sequential(nn.Conv2d(3, 8, 3)).eval()
    with pytest.raises(PlanError, match="made for another model"):
        apply_plan(other, plan)
    wider = Chain()
    wider.c = nn.Conv2d(8, 5, 1)
    with pytest.raises(PlanError, match=r"c.weight is \[5, 8, 1, 1\], the plan expects \[4, 8, 1, 1\]"):
        apply_plan(wider, plan)


def test_same_names_and_shapes_but_another_structure_is_caught_by_verification():
    """The fingerprint cannot see a residual add instead of a chain; verifying the result can."""
    plan = _plan(Chain())
    res = Residual().eval()
    before = _state(res)
    with pytest.raises(ApplyError):
        apply_plan(res, plan, example_inputs=X)
    assert _unchanged(res, before)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["removed"]["a.weight"].update({"-1": [0]}), "dims are non-negative integers"),
    (lambda d: d["removed"]["a.weight"].update({"0": [0.0, 1.0]}), "must be an integer, got float"),
    (lambda d: d["removed"]["a.weight"].update({"0": ["1"]}), "must be an integer, got str"),
    (lambda d: d["removed"].update({"a.weight": [1, 2]}), "must map dims to index lists"),
    (lambda d: d.pop("removed"), "'removed' must be an object"),
    (lambda d: d.update(attrs=[["", "num_heads", 2.5]]), "attr .*num_heads must be an integer"),
    (lambda d: d.update(attrs=[["a", "out_channels"]]), r"\[module path, attribute, value\]"),
    (lambda d: d.update(shapes={"a.weight": [8, -3]}), "shapes"),
    (lambda d: d.update(exact="yes"), "'exact' must be true or false"),
    (lambda d: d.update(surprise=1), "unknown plan fields"),
])
def test_malformed_plan_json_gives_a_plan_error_naming_the_field(edit, match):
    d = json.loads(_plan().to_json())
    d.pop("digest")  # the schema alone (a sealed plan would also fail its digest)
    edit(d)
    with pytest.raises(PlanError, match=match):
        Plan.from_dict(d)


def test_not_json_and_not_an_object_are_plan_errors():
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.from_json("{removed: ")
    with pytest.raises(PlanError):
        Plan.from_json("[1, 2]")


def test_an_edited_plan_is_refused_unless_resealed():
    """Deleting the BatchNorm's entries leaves a conv cut without its coupled BatchNorm."""
    d = json.loads(_plan().to_json())
    for k in [k for k in d["removed"] if k.startswith("bn.")]:
        del d["removed"][k]
    with pytest.raises(PlanError, match="changed after prunekit made it"):
        Plan.from_dict(d)
    plan = Plan.from_dict({**d, "digest": None}).seal()  # re-sealed on purpose: then verification is the guard
    m = Chain().eval()
    before = _state(m)
    with pytest.raises(ApplyError):
        apply_plan(m, plan, example_inputs=X)
    assert _unchanged(m, before)


@pytest.mark.parametrize("attrs, match", [
    ([("", "training", 0)], "may not set"),
    ([("", "forward", 1)], "may not set"),
    ([("a", "__class__", 1)], "may not set"),
    ([("a", "padding_mode", 1)], "not an integer count"),
    ([("a", "out_channels", 9)], "only lowers a count"),
    ([("bn", "affine", 0)], "not an integer count"),
])
def test_attrs_only_lower_existing_integer_counts(attrs, match):
    m = Chain().eval()
    before = _state(m)
    with pytest.raises(PlanError, match=match):
        apply_plan(m, Plan(attrs=attrs))
    assert _unchanged(m, before) and m.training is False


def test_hand_built_plans_with_negative_dims_or_float_indices_are_refused():
    m = Chain().eval()
    with pytest.raises(PlanError, match="non-negative"):
        apply_plan(m, Plan(removed={"a.weight": {-1: [0]}}))
    with pytest.raises(PlanError, match="non-integer"):
        apply_plan(m, Plan(removed={"a.weight": {0: [1.5]}}))


def test_digest_v2_hashes_index_bytes_and_is_deterministic():
    from prunekit.plan_schema import digest

    plan = _plan()
    assert plan.digest.startswith("v2:") and len(plan.digest) == 3 + 64
    assert digest(Plan.from_json(plan.to_json())) == plan.digest  # a round trip keeps it
    d = json.loads(plan.to_json())
    name, dims = next(iter(d["removed"].items()))
    dim = next(iter(dims))
    d["removed"][name][dim] = list(reversed(dims[dim]))  # the same set of indices, listed in another order
    assert Plan.from_dict(d).digest == plan.digest
    # negative controls: one index moved, or moved from one tensor dim to the next, changes the digest
    d["removed"][name][dim] = sorted(dims[dim])[:-1] + [sorted(dims[dim])[-1] + 1]
    with pytest.raises(PlanError, match="changed after prunekit made it"):
        Plan.from_dict(d)
    a = Plan(removed={"x": {0: [1, 2]}, "y": {0: [3]}})
    b = Plan(removed={"x": {0: [1]}, "y": {0: [2, 3]}})
    assert digest(a) != digest(b)


def test_plans_saved_with_the_v1_digest_still_load_and_are_checked():
    from prunekit.plan_schema import digest_v1

    plan = _plan()
    d = json.loads(plan.to_json())
    d["digest"] = digest_v1(plan)  # a plan file written before v2
    old = Plan.from_dict(d)
    assert old.digest == d["digest"] and old.removed == plan.removed
    name = next(iter(d["removed"]))
    del d["removed"][name]  # negative control: an edited v1 plan is refused as before
    with pytest.raises(PlanError, match="changed after prunekit made it"):
        Plan.from_dict(d)
    with pytest.raises(PlanError, match="no known format"):
        Plan.from_dict({**json.loads(plan.to_json()), "digest": "md5:1234"})
