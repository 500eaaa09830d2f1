"""The oracle and the verification of the returned model, each with negative controls that it must flag."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit import Plan, VerificationError, apply_plan, soft_hard_error
from prunekit.graph.registry import OP_RULES
from prunekit.verify import output_error, zeroed_outputs


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()


def _plan(model, x, ratio=0.5):
    graph = prunekit.trace(model, x)
    chosen, summaries = prunekit.select_units(model, graph.groups(), prunekit.PruneConfig(ratio=ratio))
    return prunekit.make_plan(graph, chosen, summaries)


def _shifted(plan: Plan, name: str, dim: int) -> Plan:
    """The same plan with one tensor's removed indices shifted by one: a deliberately wrong plan."""
    bad = Plan.from_dict(plan.to_dict())
    bad.removed[name][dim] = [(i + 1) % 16 for i in bad.removed[name][dim]]
    return bad


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return now.keys() == state.keys() and all(now[k].shape == v.shape and torch.equal(now[k], v)
                                               for k, v in state.items())


def test_oracle_is_tiny_for_a_right_plan_and_large_for_a_shifted_one():
    m, x = _net(), torch.randn(2, 3, 8, 8)
    plan = _plan(m, x)
    assert plan.exact and soft_hard_error(m, plan, x) < 1e-5
    assert soft_hard_error(m, _shifted(plan, "3.weight", 1), x) > 1e-2  # next conv reads the wrong channels


def test_nan_and_misplaced_inf_count_as_infinite_error():
    a = torch.ones(3)
    assert output_error([a], [a.clone()]) == 0.0
    assert output_error([a], [torch.tensor([1.0, float("nan"), 1.0])]) == math.inf
    assert output_error([torch.tensor([1.0, float("nan"), 1.0])], [a]) == math.inf
    assert output_error([a], [torch.tensor([1.0, float("inf"), 1.0])]) == math.inf
    inf = torch.tensor([1.0, float("-inf")])
    assert output_error([inf], [inf.clone()]) == 0.0  # the same inf in the same place is not an error
    assert output_error([torch.tensor([1, 2])], [torch.tensor([1, 3])]) == math.inf


class _Divide(nn.Module):
    """Soft-zeroing ``scale`` divides by zero (NaN/inf), removing it does not: the oracle must say inf."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.conv(x) / self.scale.view(-1, 1, 1))  # (B, C, H, W) / (C, 1, 1)


def test_soft_hard_error_is_inf_when_one_side_is_nan():
    m, x = _Divide().eval(), torch.randn(2, 3, 4, 4)
    plan = Plan(removed={"conv.weight": {0: [1]}, "conv.bias": {0: [1]}, "scale": {0: [1]}, "head.weight": {1: [1]}})
    assert soft_hard_error(m, plan, x) == math.inf


def test_apply_plan_verifies_and_names_the_first_diverging_module():
    m, x = _net(), torch.randn(2, 3, 8, 8)
    plan = _plan(m, x)
    state = _state(m)
    with pytest.raises(VerificationError) as info:
        apply_plan(m, _shifted(plan, "3.weight", 1), example_inputs=x)
    assert info.value.module == "3" and "first diverging module: 3" in str(info.value)
    assert _same_state(m, state)  # restored bit for bit
    report = {}
    apply_plan(m, plan, example_inputs=x, report=report)
    assert report["checked"] == "exact" and report["error"] < 1e-5


def test_zeroed_outputs_restore_the_model_bit_for_bit():
    m, x = _net(), torch.randn(2, 3, 8, 8)
    plan = _plan(m, x)
    state = _state(m)
    soft = apply_plan(copy.deepcopy(m), plan, "soft")
    with torch.no_grad():
        assert torch.equal(zeroed_outputs(m, plan, x)[0], soft(x))
    assert _same_state(m, state)


def test_prune_reports_what_it_verified():
    m, x = _net(), torch.randn(2, 3, 8, 8)
    r = prunekit.prune_(m, x, ratio=0.5)
    assert r.verified["checked"] == "exact" and r.verified["error"] < 1e-5
    assert "verified: outputs equal the zeroed original" in r.summary()
    r = prunekit.prune_(_net(), x, ratio=0.5, verify=False)
    assert r.verified == {} and "not verified" in r.summary()


def test_a_wrong_op_rule_is_caught_and_the_model_restored(monkeypatch):
    """Negative control for the whole engine: a flip rule that forgets to reverse its labels."""
    class Flip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.flip(self.a(x), [1]))

    torch.manual_seed(0)
    m, x = Flip().eval(), torch.randn(2, 3, 4, 4)
    assert prunekit.prune_(copy.deepcopy(m), x, ratio=0.5).verified["checked"] == "exact"

    def wrong(tracer, name, args, kwargs, out):
        inf = tracer.info(args[0])
        tracer.set_info(out, prunekit.graph.info.TensorInfo(dict(inf.labels), inf.nz))

    monkeypatch.setitem(OP_RULES, "flip", wrong)
    state = _state(m)
    with pytest.raises(VerificationError, match="first diverging module: b"):
        prunekit.prune_(m, x, ratio=0.5)
    assert _same_state(m, state) and m.a.out_channels == 8


def test_nan_output_fails_verification():
    m, x = _Divide().eval(), torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        m.scale[3] = 0.0  # the unpruned model itself now divides by zero
    plan = Plan(removed={"conv.weight": {0: [1]}, "conv.bias": {0: [1]}, "scale": {0: [1]}, "head.weight": {1: [1]}},
                exact=False)
    state = _state(m)
    with pytest.raises(VerificationError, match="not finite"):
        apply_plan(m, plan, example_inputs=x)
    assert _same_state(m, state)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_an_interrupt_during_the_check_restores_the_model(interrupt, mode):
    m, x = _net(), torch.randn(2, 3, 8, 8)
    plan = _plan(m, x)
    state = _state(m)

    def check(model):
        raise interrupt()

    with pytest.raises(interrupt):
        apply_plan(m, plan, mode, check=check)
    assert _same_state(m, state) and m[0].out_channels == 16


def test_a_failing_forward_names_its_module():
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 4, 1))).eval()
    plan = Plan(removed={"0.weight": {0: [1, 2]}, "0.bias": {0: [1, 2]}})  # the reader's columns not cut
    state = _state(m)
    with pytest.raises(prunekit.ApplyError, match=r"in module `2.0` \(Conv2d\)"):
        apply_plan(m, plan, example_inputs=torch.randn(1, 3, 4, 4))
    assert _same_state(m, state)


class _PreNorm(nn.Module):
    """A residual stream through LayerNorm (or RMSNorm): pruning it is approximate only because of the norms."""

    def __init__(self, norm=nn.LayerNorm):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.norm = norm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)  # (B, N, 16)
        h = h + self.mlp(self.norm(h))
        return self.head(self.norm(h))


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm])
def test_norm_only_plans_are_verified_against_a_norm_aware_reference(norm):
    from prunekit.verify import zeroed_outputs

    torch.manual_seed(0)
    m, x = _PreNorm(norm).eval(), torch.randn(2, 5, 6)
    plan = _plan(m, x)
    assert not plan.exact and plan.norm_only
    hard = apply_plan(copy.deepcopy(m), plan)
    with torch.no_grad():
        out = hard(x)
    assert output_error(zeroed_outputs(m, plan, x, norm_aware=True), [out]) < 1e-5
    assert output_error(zeroed_outputs(m, plan, x), [out]) > 1e-3  # plain zeroing is no reference here
    r = prunekit.prune_(copy.deepcopy(m), x, ratio=0.5)
    assert r.verified["checked"] == "exact-norm-aware" and r.verified["error"] < 1e-5
    bad = Plan.from_dict(plan.to_dict())  # negative control: the head reads the wrong columns
    bad.removed["head.weight"][1] = [(i + 1) % 16 for i in bad.removed["head.weight"][1]]
    with pytest.raises(VerificationError, match="first diverging module: head"):
        apply_plan(copy.deepcopy(m), bad, example_inputs=x)


def test_a_plain_approximate_plan_is_only_checked_for_finite_outputs():
    class Softmaxed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.softmax(self.a(x), -1))  # softmax over the pruned dim

    m, x = Softmaxed().eval(), torch.randn(3, 4)
    plan = _plan(m, x)
    assert not plan.exact and not plan.norm_only
    report = {}
    apply_plan(m, plan, example_inputs=x, report=report)
    assert report["checked"] == "finite"


def test_half_precision_outputs_get_a_looser_tolerance():
    from prunekit.verify import tolerance

    assert tolerance([torch.ones(2)]) == 1e-4
    assert tolerance([torch.ones(2, dtype=torch.float16)]) == 1e-2
    assert tolerance([torch.ones(2, dtype=torch.bfloat16), torch.ones(2)]) == 1e-2


def test_a_shrunken_output_must_be_the_reference_with_indices_removed():
    from prunekit.verify import _matches_with_removed

    a = torch.arange(24.0).reshape(2, 6, 2) + 1  # (B, C, W)
    assert _matches_with_removed(a, a[:, [0, 2, 5]], 1e-4)
    assert _matches_with_removed(a, a[:, [1, 2]], 1e-4)  # the first reference index removed
    assert not _matches_with_removed(a, a[:, [2, 0]], 1e-4)  # out of order
    assert not _matches_with_removed(a, a[:, [0, 2]] + 0.5, 1e-4)
    assert not _matches_with_removed(a[:, :2], a, 1e-4)  # grew
    assert not _matches_with_removed(a, a[:1, :3], 1e-4)  # two dims changed
    nan = a[:, [0, 2]].clone()
    nan[0, 0, 0] = float("nan")
    assert not _matches_with_removed(a, nan, 1e-4)
    ref = torch.tensor([[1.0, 1.0 + 2e-4]])  # a difference beyond the tolerance, relative to max|a|
    assert not _matches_with_removed(torch.tensor([[1.0, 2.0]]).T, ref.T[:1] + 0.0003 * 2, 1e-4)


def test_first_divergence_reports_calls_that_no_longer_line_up():
    from prunekit.verify import first_divergence

    t = torch.ones(2)
    assert first_divergence([("a", [t])], [("a", [t.clone()])]) is None
    assert first_divergence([("a", [t])], [("b", [t])]) == "a (the module calls no longer line up)"
    assert first_divergence([("a", [t]), ("b", [t])], [("a", [t]), ("b", [t + 1])]) == "b"


def test_module_outputs_and_verification_with_keyword_inputs():
    from prunekit.verify import module_outputs

    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, *, x):
            return {"y": self.b(torch.relu(self.a(x)))}

    m, x = KW().eval(), torch.randn(3, 4)
    rec = module_outputs(m, (), {"x": x})
    assert [p for p, _ in rec] == ["a", "b", ""] and rec[0][1][0].shape == (3, 8)
    r = prunekit.prune_(m, (), example_kwargs={"x": x}, ratio=0.5)
    assert r.verified["checked"] == "exact" and m.a.out_features == 4


def test_zeroed_reference_never_writes_the_model_tensors_and_handles_inf():
    from prunekit.graph.walk import walk
    from prunekit.verify import SwappedZeros

    m, x = _net(), torch.randn(2, 3, 8, 8)
    plan = _plan(m, x)
    name = next(n for n, dims in plan.removed.items() if 1 in dims)  # a weight cut along its input dim
    w = walk(m).params[name]
    idx = plan.removed[name][1]
    kept = [i for i in range(w.shape[1]) if i not in idx]
    with torch.no_grad():
        w[0, idx[0]] = math.inf  # in a removed slice: the multiply-by-mask path would make it NaN
        w[0, kept[0]] = -math.inf  # in a kept slice: it must stay
    state, ptr = _state(m), w.data_ptr()
    soft = walk(apply_plan(copy.deepcopy(m), plan, "soft")).params[name].detach()  # zeroed by index_fill
    with SwappedZeros({**walk(m).buffers, **walk(m).params}, plan):
        z = w.detach()
        assert z.data_ptr() != ptr  # a copy is swapped in, the model's storage is not written
        assert not z.isnan().any()
        assert (z.index_select(1, torch.tensor(idx)) == 0).all()
        assert torch.isinf(z).any()  # the kept -inf stays
        assert torch.equal(z, soft)
    assert w.data_ptr() == ptr and _same_state(m, state)


def test_zeroed_reference_equals_the_soft_apply_with_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 16)
            self.mid = nn.Linear(16, 16)
            self.head = nn.Linear(16, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(torch.relu(self.mid(self.emb(ids))))

    torch.manual_seed(0)
    m, x = Tied().eval(), torch.randint(0, 10, (2, 5))
    plan = _plan(m, x)
    assert not plan.is_empty()
    soft = apply_plan(copy.deepcopy(m), plan, "soft")
    state = _state(m)
    with torch.no_grad():
        ref, want = zeroed_outputs(m, plan, x)[0], soft(x)
    assert torch.equal(ref, want)
    assert _same_state(m, state) and m.head.weight is m.emb.weight
    # negative control: the unpruned model differs from the zeroed reference
    with torch.no_grad():
        assert not torch.equal(m(x), ref)


def test_zeroed_copy_cuts_two_dims_at_once_and_shares_masks_safely():
    """One mask over both dims of a weight equals index_fill along each; a mask cache shared with tensors of
    other sizes and ranks that lose the same index list gives each its own mask; the copy is detached and the
    input unchanged. Negative control: the unzeroed tensor differs from the expected one."""
    from prunekit.verify import _zeroed_copy

    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(6, 8, 3))
    idx_a, idx_b = [1, 4], [0, 5, 7]
    want = w.detach().index_fill(0, torch.tensor(idx_a), 0).index_fill(1, torch.tensor(idx_b), 0)
    cache: dict = {}
    before = w.detach().clone()
    got = _zeroed_copy(w, {0: idx_a, 1: idx_b}, cache)
    assert torch.equal(got, want) and not got.requires_grad and torch.equal(w.detach(), before)
    for shape, dims in [((8, 6), {0: idx_b}), ((8,), {0: idx_b}), ((3, 6), {1: idx_a}), ((6,), {0: idx_a})]:
        t = torch.randn(shape)
        expect = t.clone()
        for d, idx in dims.items():
            expect = expect.index_fill(d, torch.tensor(idx), 0)
        assert torch.equal(_zeroed_copy(t, dims, cache), expect)
    assert not torch.equal(w.detach(), want)  # negative control


def test_counting_passes_index_only_functions_and_counts_the_rest():
    """graph.execute.counting (the verification forward's MAC counter) gives the count of the whole forward
    under the counter's dispatch mode: torch's index-only ModIndex (transformers' vmapped mask lookups) passes
    straight through as 0 MACs, while any other custom autograd Function is still counted inside. Negative
    control: the custom matmul's MACs are counted."""
    from torch._dynamo._trace_wrapped_higher_order_op import ModIndex, mod_index

    from prunekit.graph.execute import _index_only, counting
    from prunekit.measure.counting import MacCounter

    class MatMul(torch.autograd.Function):
        @staticmethod
        def forward(a, b):
            return a @ b

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x, mask):  # x: (B, N, 4), mask: (B, N)
            b, n = torch.arange(mask.shape[0]), torch.arange(mask.shape[1])
            pick = torch.vmap(torch.vmap(lambda i, j: mod_index(mask, [i, j]), in_dims=(None, 0)),
                              in_dims=(0, None))(b, n)  # (B, N)
            return self.lin(x) * pick[..., None] + MatMul.apply(x, torch.ones(4, 3))

    assert _index_only(ModIndex) and not _index_only(MatMul)
    m, x, mask = Masked(), torch.randn(2, 5, 4), torch.ones(2, 5)
    counts = []
    for mode in (counting, lambda c: c):  # the function mode, and the whole forward under the dispatch mode
        c = MacCounter()
        with torch.no_grad(), mode(c):
            m(x, mask)
        counts.append(c.macs)
    assert counts[0] == counts[1] == 2 * (2 * 5 * 4 * 3)  # the Linear and the custom matmul, nothing for ModIndex
