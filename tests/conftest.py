"""Shared fixtures and the oracle helper used across the suite."""
from __future__ import annotations

import copy

import pytest
import torch

import prunekit
from prunekit import PruneConfig, make_plan, select_units, soft_hard_error, trace
from prunekit.measure import count


SMALL_NET_PY = """\
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 10))
"""


@pytest.fixture(scope="session")
def small_net_py() -> str:
    """Source of a ``file.py:factory`` model for the CLI tests (``build()``: a small conv net, 10 classes)."""
    return SMALL_NET_PY


def prune_exact_groups(model, inputs, kinds=("channel", "group", "head", "head_dim"), ratio=0.5, kwargs=None):
    """Trace, keep exact groups, prune them at ``ratio``; returns (graph, groups, plan)."""
    model.eval()
    graph = trace(model, inputs, kwargs)
    groups = [g for g in graph.groups(kinds) if g.exact]
    chosen, summaries = select_units(model, groups, PruneConfig(ratio=ratio, kinds=tuple(kinds)))
    plan = make_plan(graph, chosen, summaries)
    return graph, groups, plan


def output_fidelity(reference, shape=(16, 3, 12, 12)):
    """``evaluate`` for analyses: minus the mean squared difference from ``reference``'s outputs on
    fixed random inputs of ``shape`` (0 = the same outputs; higher = better)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference(x)

    def evaluate(m):
        with torch.no_grad():
            return -float((m(x) - ref).pow(2).mean())
    return evaluate


def assert_oracle(model, inputs, kinds=("channel", "group", "head", "head_dim"), ratio=0.5, kwargs=None,
                  min_groups=1, tol=1e-4):
    """Soft-vs-hard equivalence on every exact group, plus: hard model smaller, same output shapes."""
    graph, groups, plan = prune_exact_groups(model, inputs, kinds, ratio, kwargs)
    assert len(groups) >= min_groups, f"expected >= {min_groups} exact groups, got {len(groups)}"
    assert not plan.is_empty()
    assert plan.exact
    err = soft_hard_error(model, plan, inputs, kwargs)
    assert err <= tol, f"soft/hard mismatch {err:.3e}"
    hard = prunekit.apply_plan(copy.deepcopy(model), plan, "hard")
    assert count(hard, inputs, kwargs).params < count(model, inputs, kwargs).params
    return graph, groups, plan


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
