"""The layer-by-layer pipeline reproduces a plain forward when nothing is pruned, for every family,
and catches a broken capture of block 0's inputs."""
from __future__ import annotations

import pytest
import torch

from prunekit.llm.arch import layout
from prunekit.llm.pipeline import capture_inputs, run_blocks
from prunekit.llm.tiny import TINY_FAMILIES, tiny_model


def _ids(n=3, t=16):
    return torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(0))


def _logits_from_hidden(model, hidden):
    lay = layout(model)
    h = model.get_submodule(lay.final_norm)(hidden) if lay.final_norm else hidden
    return model.get_submodule(lay.lm_head)(h)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_unpruned_pipeline_equals_plain_forward(family):
    model = tiny_model(family)
    ids = _ids()
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits  # (n, T, V)
    seen = []
    out = run_blocks(model, ids, lambda i, block, inputs: seen.append((i, inputs.hidden.shape)), progress=False)
    assert [i for i, _ in seen] == [0, 1]
    assert all(s == (3, 16, model.config.hidden_size) for _, s in seen)
    with torch.no_grad():
        got = _logits_from_hidden(model, out.hidden)
    assert torch.allclose(got, ref, atol=1e-5), float((got - ref).abs().max())


def test_broken_capture_is_caught():
    """Negative control: block-0 inputs captured from the wrong windows (shifted by one) give other logits."""
    model = tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
    good = capture_inputs(model, ids)
    bad = capture_inputs(model, ids.roll(1, dims=0))
    lay = layout(model)
    with torch.no_grad():
        for inputs, expect_equal in ((good, True), (bad, False)):
            h = inputs.hidden
            for block in lay.blocks:
                inputs.hidden = h
                h = inputs.run(block, keep=True)
            assert torch.allclose(_logits_from_hidden(model, h), ref, atol=1e-5) is expect_equal


def test_visit_sees_pruned_inputs_and_source_protocol():
    """A zeroed block 0 changes what block 1 receives; a source's blocks are loaded and stored once each."""
    model = tiny_model("llama")
    lay = layout(model)
    ids = _ids()

    class Source:
        def __init__(self):
            self.loaded, self.stored = [], []

        def load(self, i):
            self.loaded.append(i)
            return lay.blocks[i]

        def store(self, i, block):
            self.stored.append(i)

    received = {}

    def visit(i, block, inputs):
        received[i] = inputs.hidden.clone()
        if i == 0:
            for p in block.mlp.parameters():
                p.data.zero_()

    src = Source()
    run_blocks(model, ids, visit, source=src, progress=False)
    assert src.loaded == src.stored == [0, 1]
    with torch.no_grad():
        dense_in1 = capture_inputs(model, ids).run(lay.blocks[0], keep=True)  # block 0 now has a zero MLP
    assert torch.allclose(received[1], dense_in1, atol=1e-6)


def test_bad_windows_rejected():
    with pytest.raises(ValueError, match="LongTensor"):
        run_blocks(tiny_model("llama"), torch.zeros(2, 8), lambda *a: None, progress=False)


def test_progress_lines_when_not_a_terminal(capsys):
    run_blocks(tiny_model("gpt2"), _ids(1, 8), lambda *a: None, progress=True)
    err = capsys.readouterr().err
    assert "block 1/2" in err and "block 2/2" in err


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_batched_pipeline_equals_one_window_at_a_time(family):
    """``batch`` windows per block call give the same final hidden states as one window per call."""
    model = tiny_model(family)
    ids = _ids(n=4)
    one = run_blocks(model, ids, lambda i, b, x: None, progress=False, batch=1)
    for batch in (3, 4):
        got = run_blocks(model, ids, lambda i, b, x: None, progress=False, batch=batch)
        assert [(s.start, s.stop) for s in got.calls()] == ([(0, 3), (3, 4)] if batch == 3 else [(0, 4)])
        assert torch.allclose(got.hidden, one.hidden, rtol=1e-4, atol=1e-5), (family, batch)


def test_batching_check_catches_a_block_that_mixes_windows():
    """Negative control: a block whose output depends on the other windows of its call (here it adds
    the batch mean) is refused for batching; the same block passes one window at a time."""
    from torch import nn
    from prunekit.llm.pipeline import BlockInputs, check_batching

    class Mixing(nn.Module):
        def forward(self, x):
            return x + x.mean(0, keepdim=True)

    inputs = BlockInputs(hidden=torch.randn(3, 5, 4), kwargs=[{}] * 3, batch=3)
    with pytest.raises(RuntimeError, match="cannot be batched"):
        check_batching(Mixing(), inputs)
    check_batching(nn.Identity(), inputs)
    inputs.batch = 1
    check_batching(Mixing(), inputs)  # one window per call: nothing to check
    with pytest.raises(ValueError, match="batch must be an int"):
        BlockInputs(hidden=torch.randn(3, 5, 4), kwargs=[{}] * 3, batch=0).calls()

