"""One rule for example inputs (``prunekit.graph.tracer.as_inputs``): a tensor or any single object is
one positional argument, a tuple or list is the arguments themselves. No module outside the
LLM pipeline writes the rule again by hand."""
from __future__ import annotations

import pathlib
import re

import torch
from torch import nn

import prunekit
from prunekit.graph.tracer import as_inputs

# the hand-written normalisation this suite keeps out: "... if isinstance(example_inputs, (tuple, list)) else (...,)"
HAND_WRITTEN = re.compile(r"isinstance\((example_)?inputs, \(?tuple[^)]*\)?\)[^\n]*else \((example_)?inputs,\)"
                          r"|not isinstance\(example_inputs, \(tuple, list\)\)")
SRC = pathlib.Path(prunekit.__file__).parent
# graph/'s own definition of the rule
PENDING = {"graph/tracer.py"}


def test_one_rule():
    x = torch.randn(2, 3)
    assert as_inputs(x) == (x,)
    assert as_inputs([x, x]) == (x, x) and as_inputs((x,)) == (x,)
    d = {"a": x}
    assert as_inputs(d) == (d,)  # a dict is one argument, not keywords (those go in example_kwargs)


def test_no_hand_written_normalisation_outside_llm():
    assert HAND_WRITTEN.search("inputs = example_inputs if isinstance(example_inputs, (tuple, list)) "
                               "else (example_inputs,)")  # negative control: the pattern is recognised
    found = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
             if not p.relative_to(SRC).parts[0] == "llm" and HAND_WRITTEN.search(p.read_text())]
    assert sorted(set(found) - PENDING) == []


def test_a_list_a_tuple_and_a_bare_tensor_prune_alike():
    x = torch.randn(4, 8)
    plans = []
    for inputs in (x, (x,), [x]):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        plans.append(prunekit.prune_(m, inputs, ratio=0.5).plan.to_dict())
    assert plans[0] == plans[1] == plans[2]
    assert prunekit.blocks.find_blocks(nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.ReLU())), [x]) == ["0"]
