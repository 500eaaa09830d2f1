"""prune_: ratios per module, caps, rounding, summaries with torch-counted MACs."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import prunekit


def _mlp():
    return nn.Sequential(nn.Linear(8, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 3)).eval()


def test_uniform_ratio_halves_hidden_widths():
    model = _mlp()
    result = prunekit.prune_(model, torch.randn(4, 8), ratio=0.5)
    assert model[0].out_features == 20 and model[2].out_features == 20
    # exact MACs of the pruned MLP: 8*20 + 20*20 + 20*3 per sample, batch 4
    assert result.after.macs == 4 * (8 * 20 + 20 * 20 + 20 * 3)
    assert result.before.macs == 4 * (8 * 40 + 40 * 40 + 40 * 3)
    assert result.after.params == sum(p.numel() for p in model.parameters())


def test_per_module_ratio_and_rounding():
    model = _mlp()
    prunekit.prune_(model, torch.randn(4, 8), ratio=0.25, ratios={"2": 0.75}, round_to=8)
    assert model[0].out_features == 32  # 40 * 0.75 = 30 -> rounded up to 32
    assert model[2].out_features == 16  # 40 * 0.25 = 10 -> 16


def test_per_group_ratio_by_root_tensor():
    model = _mlp()
    prunekit.prune_(model, torch.randn(4, 8), ratio=0.0, ratios={"2.weight:0": 0.5})
    assert model[0].out_features == 40 and model[2].out_features == 20


def test_cap_never_empties_a_group():
    model = _mlp()
    prunekit.prune_(model, torch.randn(4, 8), ratio=0.99, max_ratio=0.5)
    assert model[0].out_features == 20


def test_l2_removes_smallest_channels():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[:5] *= 1e-3  # five tiny neurons in the first layer (row, bias and next column)
        model[0].bias[:5] *= 1e-3
        model[2].weight[:, :5] *= 1e-3
    graph = prunekit.trace(model, torch.randn(4, 8))
    g = next(g for g in graph.groups() if g.root[0] == "0.weight")
    scores = prunekit.get_criterion("l2").score(model, g)
    assert set(torch.argsort(scores)[:5].tolist()) == {0, 1, 2, 3, 4}


def test_resnet50_macs_to_about_a_quarter():
    model = torchvision.models.resnet50().eval()
    result = prunekit.prune_(model, torch.randn(1, 3, 96, 96), ratio=0.5)
    assert 0.2 < result.macs_ratio < 0.34
    assert "MACs" in result.summary()


def test_macs_target_finds_the_smallest_ratio_that_meets_it():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    result = prunekit.prune_(model, x, macs=0.5, round_to=8)
    assert result.macs_ratio <= 0.5
    assert result.macs_ratio > 0.45  # not far below: the search stops at the first ratio that meets it
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    # a slightly smaller ratio would not have met the budget
    again = torchvision.models.resnet18().eval()
    smaller = prunekit.prune_(again, x, ratio=result.config.ratio - 0.01, round_to=8)
    assert smaller.macs_ratio > 0.5 or smaller.macs_ratio == result.macs_ratio


def test_macs_target_that_cannot_be_met_leaves_the_model_alone():
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(prunekit.PlanError, match="cannot reach"):
        prunekit.prune_(model, torch.randn(4, 8), macs=0.01, max_ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="ratios"):
        prunekit.prune_(model, torch.randn(4, 8), macs=0.5, ratios={"0": 0.5}, scope="global")
    with pytest.raises(ValueError, match="threshold"):
        prunekit.prune_(model, torch.randn(4, 8), macs=0.5, threshold=0.1)


def test_macs_target_keeps_the_given_ratios_and_searches_the_rest():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    stream = ("conv1", "layer*.0.conv2", "layer*.0.downsample.0")  # roots of the residual-stream groups
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    result = prunekit.prune_(model, x, macs=0.6, ratios={p: 0.0 for p in stream})
    assert 0.55 < result.macs_ratio <= 0.6
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert after["conv1"] == widths["conv1"] and after["layer4.1.conv2"] == widths["layer4.1.conv2"]
    assert after["layer1.0.conv1"] < widths["layer1.0.conv1"]  # the block-internal channels took the cut
    assert dict(result.config.ratios) == {p: 0.0 for p in stream} and result.config.ratio > 0.4


class _TinyViT(nn.Module):
    """Residual stream of width 32 through two MLP blocks, then a classifier."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)) for _ in range(2))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.embed(x)  # (B, N, 32)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x.mean(1))  # (B, 5)


def test_keep_outputs_keeps_only_the_heads_outputs():
    x = torch.randn(2, 7, 12)
    kept = _TinyViT().eval()
    r = prunekit.prune_(kept, x, ratio=0.5, keep_outputs=["head"])
    assert kept.head.out_features == 5 and kept.head.in_features == 16 and kept.embed.out_features == 16
    assert r.verified["checked"] == "exact"
    ignored = _TinyViT().eval()
    r2 = prunekit.prune_(ignored, x, ratio=0.5, ignore=["head"])
    assert ignored.head.in_features == 32  # ignore= pins the head's inputs too: the residual width stays
    assert r.macs_ratio < r2.macs_ratio
    assert any(b.op == "ignore" and b.tensor == "embed.weight" for b in r2.blocked)  # the reason is on record
    assert prunekit.PruneConfig.from_json(prunekit.PruneConfig(keep_outputs=("head",)).to_json()).keep_outputs == ("head",)
    with pytest.raises(KeyError):
        prunekit.prune_(_TinyViT().eval(), x, ratio=0.5, keep_outputs=["hed"])


def test_nothing_pruned_says_why():
    class Perm(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.sort(self.a(x), dim=-1).values)  # sorting along the features: no group

    with pytest.warns(UserWarning, match=r"nothing was pruned: op `sort` in module"):
        r = prunekit.prune_(Perm().eval(), torch.randn(2, 4), ratio=0.5)
    assert not r.plan.groups and any("sort" in str(b) for b in r.blocked)
    assert "kept: op `sort`" in r.summary()


class _SharedDim(nn.Module):
    """Two independent widths reshaped with one attribute ``dim``: they must be cut by the same amount."""

    def __init__(self):
        super().__init__()
        self.dim = 16
        self.q, self.k = nn.Linear(32, 16), nn.Linear(32, 16)
        self.o, self.o2 = nn.Linear(16, 32), nn.Linear(16, 32)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).reshape(b, n, 1, self.dim)  # (B, N, 1, dim)
        k = self.k(x).reshape(b, n, 1, self.dim)
        return self.o(q.reshape(b, n, self.dim)) + self.o2(k.reshape(b, n, self.dim))


def test_groups_behind_one_attribute_cut_unequally_are_kept_and_reported():
    x = torch.randn(2, 5, 32)
    m = _SharedDim().eval()
    r = prunekit.prune_(m, x, ratio=0.5)  # equal cuts: fine
    assert m.dim == 8 and m.q.out_features == 8 and m.k.out_features == 8
    m = _SharedDim().eval()
    with pytest.warns(UserWarning, match=r"kept 2 group\(s\) whole .*dim would need two values"):
        r = prunekit.prune_(m, x, ratio=0.5, ratios={"k": 0.25})
    assert m.dim == 16 and r.plan.is_empty() and "the model is unchanged" in r.summary()


def test_after_macs_are_the_same_counted_by_the_verification_forward_or_without_it():
    """With verify on, the MACs after are counted during the verification forward of the returned model;
    with verify off, by a forward of their own: one number either way, equal to counting the model."""
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, groups=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, 5)).eval()

    x = torch.randn(2, 3, 9, 9)
    on, off = net(), net()
    r_on = prunekit.prune_(on, x, ratio=0.5)
    r_off = prunekit.prune_(off, x, ratio=0.5, verify=False)
    assert r_on.verified["checked"] == "exact" and "output_shapes" not in r_on.verified
    assert r_on.after.macs == r_off.after.macs == prunekit.measure.count(on, x).macs < r_on.before.macs


def test_prune_on_a_model_with_masks_attached_raises_and_changes_nothing():
    import pytest
    import torch
    from torch import nn

    from prunekit.errors import PrunekitError
    from prunekit.sparsity import finalize, sparsify_

    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    sparsify_(m, sparsity=0.5)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(PrunekitError, match="parametrizations .*finalize"):
        prunekit.prune_(m, torch.randn(2, 8), ratio=0.5)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    finalize(m)
    assert prunekit.prune_(m, torch.randn(2, 8), ratio=0.5).macs_ratio < 1.0


def test_a_model_nested_200_deep_prunes_like_it_runs():
    import sys

    import torch
    from torch import nn

    class Wrap(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    for _ in range(200):
        m = Wrap(m)
    x = torch.randn(2, 8)
    m(x)  # a plain forward works at the default recursion limit
    limit = sys.getrecursionlimit()
    graph = prunekit.trace(m, x)
    assert graph.groups()
    result = prunekit.prune_(m, x, ratio=0.5)
    assert result.verified and result.macs_ratio < 1.0
    assert sys.getrecursionlimit() == limit  # restored


def test_a_fallback_to_a_real_forward_is_reported_and_scripted_models_get_a_clear_error():
    import pytest
    import torch
    from torch import nn

    from prunekit.errors import UnsupportedOpError

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 2)

        def forward(self, x):
            h = self.a(x)
            if h.sum() > 0:  # needs values: the meta trace cannot decide
                h = h * 2
            return self.b(torch.relu(h))

    result = prunekit.prune_(Branchy().eval(), torch.randn(3, 4), ratio=0.5)
    assert any("traced with a real forward" in w for w in result.warnings)
    assert "warning: traced with a real forward" in result.summary()
    plain = prunekit.prune_(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)).eval(), torch.randn(3, 4))
    assert not any("real forward" in w for w in plain.warnings)  # negative control

    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)))
    with pytest.raises(UnsupportedOpError, match="TorchScript module.*prune the eager nn.Module"):
        prunekit.prune_(scripted, torch.randn(3, 4))


def test_budget_search_keeps_heads_whole_when_a_head_plan_cannot_apply(monkeypatch):
    """The MAC search's copies fall back like prune_ itself: a plan cutting attention heads that fails to
    apply is retried with heads kept whole (and the result says so), instead of the search crashing."""
    from prunekit import api
    from prunekit.errors import ApplyError

    real = api.apply_plan

    def no_heads(model, plan, *args, **kwargs):
        if any("head" in attr for _, attr, _ in plan.attrs):  # e.g. MultiheadAttention.num_heads / head_dim
            raise ApplyError("injected: head cut refused")
        return real(model, plan, *args, **kwargs)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0),
                             nn.Linear(32, 4)).eval()

    x = torch.randn(2, 5, 16)
    monkeypatch.setattr(api, "apply_plan", no_heads)
    res = prunekit.prune_(m := model(), x, macs=0.75, keep_outputs=["2"])
    assert res.after.macs <= 0.75 * res.before.macs
    assert any("heads were kept" in n for n in res.warnings)
    assert m[1].self_attn.num_heads == 4  # heads whole
    monkeypatch.setattr(api, "apply_plan", real)  # negative control: without the injected failure, heads go
    res = prunekit.prune_(m := model(), x, macs=0.75, keep_outputs=["2"])
    assert not any("heads were kept" in n for n in res.warnings)
    assert any("head" in attr for _, attr, _ in res.plan.attrs)  # the injection had something to refuse
