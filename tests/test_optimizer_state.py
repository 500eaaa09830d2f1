"""An optimizer built before a hard prune keeps training the same parameters, its state sliced
(``prune_(..., optimizer=)``): training on equals training with a fresh optimizer sliced by hand."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit import apply_plan
from prunekit.errors import ApplyError, OptimizerStateError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 8, generator=g), torch.randn(12, 4, generator=g)


def _train(model, opt, steps):
    x, y = _data()
    for i in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x[i % 3 * 4:(i % 3 + 1) * 4]), y[i % 3 * 4:(i % 3 + 1) * 4]).backward()
        opt.step()


OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "adamw_amsgrad": lambda ps: torch.optim.AdamW(ps, lr=0.01, amsgrad=True),
}


def _slice_by_hand(t: torch.Tensor, dims: dict[int, list[int]]) -> torch.Tensor:
    """Independent of prunekit's slicing: a boolean mask per dim."""
    for dim, idx in dims.items():
        keep = torch.ones(t.shape[dim], dtype=torch.bool)
        keep[idx] = False
        t = t.transpose(0, dim)[keep].transpose(0, dim)
    return t.clone()


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_mid_training_prune_equals_a_fresh_optimizer_sliced_by_hand(kind):
    make = OPTIMIZERS[kind]
    model = _mlp()
    opt = make(model.parameters())
    _train(model, opt, 3)
    params = {n: p for n, p in model.named_parameters()}
    state = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in params.items()}
    twin = copy.deepcopy(model)
    x = _data()[0][:4]

    result = prunekit.prune_(model, x, ratio=0.5, optimizer=opt)
    plan = result.plan
    assert {n: p for n, p in model.named_parameters()} == params  # the same objects ...
    assert all(a is b for a, b in zip(model.parameters(), params.values()))
    assert model[0].weight.shape == (8, 8) and model[2].weight.shape == (8, 8)  # ... with smaller data
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())

    apply_plan(twin, plan)  # by hand: the plan, then a fresh optimizer whose state is sliced by hand
    fresh = make(twin.parameters())
    for n, p in twin.named_parameters():
        fresh.state[p] = {k: (_slice_by_hand(v, plan.removed.get(n, {})) if v.dim() else v.clone())
                          for k, v in state[n].items()}
    for n, p in model.named_parameters():  # right after the prune: the same state
        for k, v in opt.state[p].items():
            assert torch.equal(v, fresh.state[dict(twin.named_parameters())[n]][k]), (n, k)
    _train(model, opt, 4)
    _train(twin, fresh, 4)
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), n  # exact: the same arithmetic on the same tensors

    # negative control: the same training with the state dropped (a fresh, empty optimizer) differs
    other = _mlp()
    other_opt = make(other.parameters())
    _train(other, other_opt, 3)
    apply_plan(other, plan)
    reset = make(other.parameters())
    _train(other, reset, 4)
    assert not all(torch.equal(a, b) for a, b in zip(other.parameters(), twin.parameters()))


def test_without_optimizer_the_stale_state_fails_loudly_at_the_next_step():
    model = _mlp()
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    _train(model, opt, 2)
    prunekit.prune_(model, _data()[0][:4], ratio=0.5)  # optimizer= not given: its momentum keeps old shapes
    assert opt.state[model[0].weight]["momentum_buffer"].shape == (16, 8)
    with pytest.raises(RuntimeError, match="size"):
        _train(model, opt, 1)


def test_soft_apply_zeroes_the_same_state_slices():
    model = _mlp()
    opt = OPTIMIZERS["adam"](model.parameters())
    _train(model, opt, 2)
    plan = prunekit.prune_(copy.deepcopy(model), _data()[0][:4], ratio=0.5).plan
    apply_plan(model, plan, "soft", optimizer=opt)
    rows = plan.removed["0.weight"][0]
    st = opt.state[model[0].weight]
    assert st["exp_avg"].shape == (16, 8) and st["exp_avg"][rows].abs().sum() == 0
    assert st["exp_avg_sq"][rows].abs().sum() == 0 and st["exp_avg_sq"].abs().sum() > 0


def test_state_that_cannot_be_sliced_is_refused_naming_parameter_and_key():
    model = _mlp()
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    _train(model, opt, 1)
    opt.state[model[0].weight]["row_factor"] = torch.zeros(16)  # factored state (Adafactor-like)
    before = [(p, p.detach().clone()) for p in model.parameters()]
    with pytest.raises(OptimizerStateError, match=r"'row_factor' of parameter '0.weight'"):
        prunekit.prune_(model, _data()[0][:4], ratio=0.5, optimizer=opt)
    assert all(a is p and torch.equal(a, v) for a, (p, v) in zip(model.parameters(), before))
    lbfgs = torch.optim.LBFGS(model.parameters())
    with pytest.raises(OptimizerStateError, match="LBFGS"):
        prunekit.prune_(model, _data()[0][:4], ratio=0.5, optimizer=lbfgs)


def test_failed_apply_restores_the_optimizer_state():
    model = _mlp()
    opt = OPTIMIZERS["adam"](model.parameters())
    _train(model, opt, 2)
    plan = prunekit.prune_(copy.deepcopy(model), _data()[0][:4], ratio=0.5).plan
    held = {id(p): dict(opt.state[p]) for p in model.parameters()}

    def boom(m):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        apply_plan(model, plan, check=boom, optimizer=opt)
    for p in model.parameters():
        assert all(opt.state[p][k] is v for k, v in held[id(p)].items())
    with pytest.raises(ApplyError):
        apply_plan(model, plan, check=lambda m: 1 / 0, optimizer=opt)
    assert all(opt.state[p][k] is v for p in model.parameters() for k, v in held[id(p)].items())


def test_tied_weights_state_sliced_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 12)
            self.mid = nn.Linear(12, 12)
            self.head = nn.Linear(12, 10, bias=False)
            self.head.weight = self.emb.weight  # (10, 12): the hidden dim is dim 1 of both

        def forward(self, ids):
            return self.head(torch.relu(self.mid(self.emb(ids))) + self.emb(ids))

    torch.manual_seed(0)
    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ids = torch.randint(0, 10, (2, 5))
    for _ in range(2):
        opt.zero_grad()
        model(ids).logsumexp(-1).mean().backward()
        opt.step()
    w = model.emb.weight
    prunekit.prune_(model, ids, ratio=0.5, optimizer=opt)
    assert model.head.weight is w and model.emb.weight is w and w.shape == (10, 6)
    assert opt.state[w]["momentum_buffer"].shape == (10, 6)
    opt.zero_grad()
    model(ids).logsumexp(-1).mean().backward()
    opt.step()  # trains on
