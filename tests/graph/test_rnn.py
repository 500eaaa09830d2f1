"""nn.LSTM / nn.GRU / nn.RNN pruned exactly: hidden (and projection) units are one group over every
layer and direction, through packed sequences and the final states, and the MACs are counted."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence, unpack_sequence
from torch.utils.flop_counter import FlopCounterMode

import prunekit
from prunekit.graph.execute import meta_forward
from prunekit.graph.tracer import trace
from prunekit.measure.counting import RNN_FLOP_FORMULAS, MacCounter
from prunekit.plan import Plan, apply_plan

GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}
VOCAB, IN, HIDDEN, T, B = 20, 6, 8, 5, 3
LENGTHS = torch.tensor([5, 4, 2])  # sorted: pack_padded_sequence's default enforce_sorted=True


class Net(nn.Module):
    """An RNN between an (embedding or dense) input and a Linear head that reads ``use``:
    ``output`` (mean over time), ``h_n`` or ``c_n`` (last layer, both directions)."""

    def __init__(self, cell, layers, bidir, batch_first, embed, packed, use, proj=0, h_use="cat"):
        super().__init__()
        self.cfg = (batch_first, embed, packed, use, h_use)
        self.emb = nn.Embedding(VOCAB, IN) if embed else None
        kw = {"proj_size": proj} if proj else {}
        self.rnn = cell(IN, HIDDEN, layers, bidirectional=bidir, batch_first=batch_first, **kw)
        dirs = 2 if bidir else 1
        width = (proj or HIDDEN) if use != "c_n" else HIDDEN
        feats = {"cat": dirs, "last": 1, "last2": 2, "permute": layers * dirs}[h_use if use != "output" else "cat"]
        self.head = nn.Linear(width * feats, 3)

    def forward(self, x):
        batch_first, embed, packed, use, h_use = self.cfg
        if self.emb is not None:
            x = self.emb(x)
        if packed:
            x = pack_padded_sequence(x, LENGTHS, batch_first=batch_first)
        out, state = self.rnn(x)
        if use == "output":
            if packed:
                out, _ = pad_packed_sequence(out, batch_first=batch_first)
            return self.head(out.mean(1 if batch_first else 0))
        s = state if isinstance(state, torch.Tensor) else state[0 if use == "h_n" else 1]
        if h_use == "last":
            z = s[-1]
        elif h_use == "last2":  # the last two rows, batch first, flattened
            z = s[-2:].transpose(0, 1).reshape(B, -1)  # (2, B, H) -> (B, 2 * H)
        elif h_use == "permute":
            z = s.permute(1, 0, 2).reshape(B, -1)  # (L * D, B, H) -> (B, L * D * H)
        else:  # both directions of the last layer, or the last row when unidirectional
            z = torch.cat((s[-2], s[-1]), 1) if self.rnn.bidirectional else s[-1]
        return self.head(z)


def make_input(embed, batch_first, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T) if batch_first else (T, B)
    if embed:
        return torch.randint(0, VOCAB, shape, generator=g)
    return torch.randn(*shape, IN, generator=g)


def flat(out):
    return out if isinstance(out, torch.Tensor) else torch.cat([t.reshape(-1) for t in out])


def run(model, x):
    """``model``'s outputs on ``x`` (one input, or a tuple of them), flattened into one tensor."""
    return flat(model(*x) if isinstance(x, tuple) else model(x))


def assert_consistent(rnn: nn.RNNBase, cell, hidden, proj=0):
    """Every layer and direction has ``hidden`` units (and ``proj`` projections), as the attributes say."""
    g = GATES[cell]
    assert rnn.hidden_size == hidden and rnn.proj_size == proj
    out = proj or hidden
    dirs = 2 if rnn.bidirectional else 1
    for layer in range(rnn.num_layers):
        for sfx in ([""] if dirs == 1 else ["", "_reverse"]):
            w_ih = getattr(rnn, f"weight_ih_l{layer}{sfx}")
            w_hh = getattr(rnn, f"weight_hh_l{layer}{sfx}")
            assert w_ih.shape[0] == g * hidden and w_hh.shape == (g * hidden, out)
            if layer:
                assert w_ih.shape[1] == dirs * out
            for b in ("bias_ih", "bias_hh"):
                assert getattr(rnn, f"{b}_l{layer}{sfx}").shape == (g * hidden,)
            if proj:
                assert getattr(rnn, f"weight_hr_l{layer}{sfx}").shape == (proj, hidden)


def _tensors(group) -> set[str]:
    return {name for (name, _), _ in group.signature}


def _members_named(graph, fragment):
    """The groups that remove slices of a tensor whose name contains ``fragment``."""
    return [g for g in graph.groups() if any(fragment in n for n in _tensors(g))]


def prune_and_check(build, x, cell, proj=0, exact=True):
    """prune_ at ratio 0.5; soft == hard on the plan (flagged exact unless ``exact`` is None); consistent,
    smaller, finite; reloads from a state_dict."""
    torch.manual_seed(0)
    model = build().eval()
    original = copy.deepcopy(model)
    before = model.rnn.hidden_size
    r = prunekit.prune_(model, x, ratio=0.5)
    err = prunekit.soft_hard_error(original, r.plan, x)
    assert err <= 1e-4, err
    if exact is not None:
        assert r.plan.exact == exact
    hidden = model.rnn.hidden_size
    assert hidden < before, "the hidden units were not pruned"
    new_proj = model.rnn.proj_size
    if proj:
        assert 0 < new_proj < proj
    assert_consistent(model.rnn, cell, hidden, new_proj)
    with torch.no_grad():
        y = run(model, x)
        soft = run(apply_plan(copy.deepcopy(original), r.plan, "soft"), x)
    assert torch.isfinite(y).all() and torch.isfinite(soft).all()
    torch.testing.assert_close(y, soft, rtol=1e-4, atol=1e-5)
    fresh = build().eval()
    apply_plan(fresh, r.plan)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(run(fresh, x), y)
    return model, r


# A fixed sample of the product cell x layers x bidirectional x batch_first x input x packed x use:
# every (layers, bidirectional, packed) triple for every cell, the other axes rotated through it.
def _cases():
    cases = []
    for i, (cell, (layers, bidir, packed)) in enumerate(
            itertools.product((nn.LSTM, nn.GRU, nn.RNN), itertools.product((1, 2, 3), (False, True), (False, True)))):
        uses = ("output", "h_n", "c_n") if cell is nn.LSTM else ("output", "h_n")
        batch_first = bool(i % 2)
        embed = bool((i // 2) % 2)
        use = uses[(i // 4 + i) % len(uses)]
        cases.append(pytest.param(cell, layers, bidir, batch_first, embed, packed, use,
                                  id=f"{cell.__name__}-L{layers}-{'bi' if bidir else 'uni'}-"
                                     f"{'bf' if batch_first else 'tf'}-{'emb' if embed else 'dense'}-"
                                     f"{'packed' if packed else 'padded'}-{use}"))
    return cases


CASES = _cases()


def test_case_sample_covers_every_axis():
    values = list(zip(*[c.values for c in CASES]))
    assert set(values[0]) == {nn.LSTM, nn.GRU, nn.RNN} and set(values[1]) == {1, 2, 3}
    for axis in (2, 3, 4, 5):
        assert set(values[axis]) == {False, True}
    assert set(values[6]) == {"output", "h_n", "c_n"}
    assert {(v[1], v[2], v[5]) for v in zip(*values)} == set(itertools.product((1, 2, 3), (False, True),
                                                                               (False, True)))
    assert {(v[0], v[6]) for v in zip(*values)} >= {(c, u) for c in (nn.LSTM, nn.GRU, nn.RNN)
                                                     for u in ("output", "h_n")} | {(nn.LSTM, "c_n")}


@pytest.mark.parametrize("cell,layers,bidir,batch_first,embed,packed,use", CASES)
def test_rnn_pruned_exactly(cell, layers, bidir, batch_first, embed, packed, use):
    x = make_input(embed, batch_first)
    model, r = prune_and_check(lambda: Net(cell, layers, bidir, batch_first, embed, packed, use), x, cell)
    if embed:  # the embedding width feeds weight_ih_l0 only: pruned as its own group
        assert model.emb.embedding_dim == model.rnn.input_size < IN


@pytest.mark.parametrize("h_use", ["last", "last2", "permute", "cat"])
@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_final_state_slices(cell, h_use):
    """``h_n[-1]``, ``h_n[-2:]``, ``cat(h_n[-2], h_n[-1])`` and ``h_n.permute(1, 0, 2).reshape(B, -1)``."""
    x = make_input(True, True)
    prune_and_check(lambda: Net(cell, 2, True, True, True, False, "h_n", h_use=h_use), x, cell)


@pytest.mark.parametrize("layers,bidir,packed,use", [(1, False, False, "output"), (2, True, True, "h_n"),
                                                     (2, True, False, "c_n"), (3, False, True, "output")])
def test_lstm_projections(layers, bidir, packed, use):
    x = make_input(True, False)
    model, r = prune_and_check(lambda: Net(nn.LSTM, layers, bidir, False, True, packed, use, proj=6), x,
                               nn.LSTM, proj=6)
    assert ("rnn", "proj_size", model.rnn.proj_size) in [tuple(a) for a in r.plan.attrs]


def test_issue_model_bidirectional_lstm_after_embedding():
    """The report: 2-layer bidirectional LSTM after an Embedding, last step into a Linear head. Layer 0's
    reverse direction was left out of the hidden group (and pruned alone: NaN outputs); MACs said 480."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 32)
            self.rnn = nn.LSTM(32, 48, 2, batch_first=True, bidirectional=True)
            self.head = nn.Linear(96, 5)

        def forward(self, x):
            out, _ = self.rnn(self.emb(x))
            return self.head(out[:, -1])

    x = torch.randint(0, 100, (2, 20))
    graph = trace(M().eval(), x)
    rnn_groups = _members_named(graph, "weight_hh")
    assert len(rnn_groups) == 1
    names = _tensors(rnn_groups[0])
    assert {f"rnn.weight_hh_l{k}{s}" for k in (0, 1) for s in ("", "_reverse")} <= names
    model, r = prune_and_check(M, x, nn.LSTM)
    macs = sum(20 * 2 * p.numel() for p in model.rnn.parameters() if p.dim() == 2) + 2 * 5 * 96
    assert r.after.macs == macs - 2 * 5 * 96 + 2 * 5 * model.head.in_features
    assert r.after.macs > 100_000




def test_initial_state_from_caller_pins_hidden_units():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(IN, HIDDEN, 2)
            self.head = nn.Linear(HIDDEN, 3)

        def forward(self, x, h0, c0):
            out, _ = self.rnn(x, (h0, c0))
            return self.head(out[-1])

    x = torch.randn(T, B, IN)
    h0, c0 = torch.randn(2, B, HIDDEN), torch.randn(2, B, HIDDEN)
    graph = trace(M().eval(), (x, h0, c0))
    assert not _members_named(graph, "weight_hh")
    assert any("initial state" in reason for reason in graph.store.pinned.values())
    model = M().eval()
    prunekit.prune_(model, (x, h0, c0), ratio=0.5)
    assert model.rnn.hidden_size == HIDDEN


def test_zero_state_made_by_the_caller_pins_hidden_units():
    """The tutorial pattern: ``h0 = torch.zeros(layers, B, self.hidden)`` in the model's forward has a
    fixed size after pruning, so the units stay."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(IN, HIDDEN, 1, batch_first=True)
            self.head = nn.Linear(HIDDEN, 3)

        def forward(self, x):
            h0 = torch.zeros(1, x.size(0), HIDDEN)
            out, _ = self.rnn(x, h0)
            return self.head(out[:, -1])

    model = M().eval()
    x = torch.randn(B, T, IN)
    r = prunekit.prune_(model, x, ratio=0.5)
    assert model.rnn.hidden_size == HIDDEN and torch.isfinite(model(x)).all()
    assert not r.plan.removed.get("rnn.weight_hh_l0")


def test_initial_state_computed_from_units_is_coupled():
    """An encoder's final state as the decoder's initial state: one hidden group for both, exact."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.GRU(IN, HIDDEN, 2, batch_first=True)
            self.dec = nn.GRU(IN, HIDDEN, 2, batch_first=True)
            self.head = nn.Linear(HIDDEN, 3)

        def forward(self, x):
            _, h = self.enc(x)
            out, _ = self.dec(x, h)
            return self.head(out[:, -1])

    x = torch.randn(B, T, IN)
    graph = trace(M().eval(), x)
    groups = _members_named(graph, "weight_hh")
    assert len(groups) == 1 and {n.split(".")[0] for n in _tensors(groups[0])} >= {"enc", "dec"}
    model = M().eval()
    original = copy.deepcopy(model)
    r = prunekit.prune_(model, x, ratio=0.5)
    assert model.enc.hidden_size == model.dec.hidden_size < HIDDEN
    assert prunekit.soft_hard_error(original, r.plan, x) <= 1e-4 and torch.isfinite(model(x)).all()


def test_learned_initial_state_is_sliced():
    """``nn.Parameter`` initial states expanded over the batch: their hidden dim is pruned with the units."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(IN, HIDDEN, 2, bidirectional=True)
            self.h0 = nn.Parameter(torch.randn(4, 1, HIDDEN))
            self.c0 = nn.Parameter(torch.randn(4, 1, HIDDEN))
            self.head = nn.Linear(2 * HIDDEN, 3)

        def forward(self, x):
            h0 = self.h0.expand(-1, x.size(1), -1).contiguous()  # (4, 1, H) -> (4, B, H)
            c0 = self.c0.expand(-1, x.size(1), -1).contiguous()
            out, _ = self.rnn(x, (h0, c0))
            return self.head(out[-1])

    model, _ = prune_and_check(M, torch.randn(T, B, IN), nn.LSTM)
    assert model.h0.shape == model.c0.shape == (4, 1, model.rnn.hidden_size)


def test_unsorted_packed_sequence():
    """``enforce_sorted=False``: the batch is permuted in and out (index_select over the batch dim)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, IN)
            self.rnn = nn.LSTM(IN, HIDDEN, 2, bidirectional=True)
            self.head = nn.Linear(2 * HIDDEN, 3)

        def forward(self, x):
            p = pack_padded_sequence(self.emb(x), torch.tensor([2, 5, 4]), enforce_sorted=False)
            out, (h, c) = self.rnn(p)
            out, _ = pad_packed_sequence(out)
            return self.head(out.sum(0)), self.head(torch.cat((h[-2], h[-1]), 1))

    x = torch.randint(0, VOCAB, (T, B))
    prune_and_check(M, x, nn.LSTM, exact=True)  # index_select over the batch keeps zeroed units zero: exact


class PackSequence(nn.Module):
    """``pack_sequence`` of separately embedded sequences (pad_sequence + packing) and ``unpack_sequence``."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, IN)
        self.rnn = nn.GRU(IN, HIDDEN, 2, bidirectional=True)
        self.head = nn.Linear(2 * HIDDEN, 3)

    def forward(self, a, b, c):
        out, _ = self.rnn(pack_sequence([self.emb(a), self.emb(b), self.emb(c)]))
        return torch.stack([self.head(t.mean(0)) for t in unpack_sequence(out)])


class Unbatched(nn.Module):
    """A 2-d input (the module adds and removes the batch dim) after a Linear, with projections."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, IN)
        self.rnn = nn.LSTM(IN, HIDDEN, 2, proj_size=4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        out, (h, _) = self.rnn(torch.relu(self.lin(x)))
        return self.head(out[-1]) + self.head(h[-1])


@pytest.mark.parametrize("build,x", [
    (PackSequence, (torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7, 8, 9]), torch.tensor([10, 11]))),
    (Unbatched, (torch.randn(T, 5),)),
], ids=["pack_sequence", "unbatched_proj"])
def test_sequence_utilities_and_unbatched(build, x):
    model, _ = prune_and_check(build, x, type(build().rnn), proj=getattr(build().rnn, "proj_size", 0))
    if isinstance(model, Unbatched):
        assert model.lin.out_features == model.rnn.input_size < IN  # the input width is pruned too


# -- negative controls: a wrong plan must be caught ----------------------------------------------


def _oracle_or_inf(model, plan, x):
    """soft_hard_error, with errors and non-finite outputs of the hard model counted as infinite."""
    try:
        err = prunekit.soft_hard_error(model, plan, x)
        hard = apply_plan(copy.deepcopy(model), plan)
        with torch.no_grad():
            if not torch.isfinite(run(hard, x)).all():
                return math.inf
        return err
    except Exception:  # noqa: BLE001 - a plan that does not even run is as wrong as it gets
        return math.inf


def _one_direction_plan(plan: Plan, keep: str) -> Plan:
    """``plan`` restricted to the recurrent tensors of one direction (``keep`` in their name or not)."""
    def wanted(name):
        if not name.startswith("rnn."):
            return False
        return name.endswith("_reverse") == (keep == "_reverse")
    removed = {n: dims for n, dims in plan.removed.items() if wanted(n)}
    return Plan(removed, [a for a in plan.attrs if a[0] == "rnn"], [], plan.exact)


@pytest.mark.parametrize("keep", ["forward", "_reverse"])
@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_negative_control_one_direction_cut(cell, keep):
    torch.manual_seed(0)
    build = lambda: Net(cell, 2, True, True, False, False, "output")  # noqa: E731
    x = make_input(False, True)
    model = build().eval()
    plan = prunekit.prune_(copy.deepcopy(model), x, ratio=0.5).plan
    assert _oracle_or_inf(model, plan, x) <= 1e-4
    assert _oracle_or_inf(model, _one_direction_plan(plan, keep), x) > 1e-2


def test_negative_control_shifted_hidden_indices():
    torch.manual_seed(0)
    build = lambda: Net(nn.LSTM, 2, True, True, True, True, "output")  # noqa: E731
    x = make_input(True, True)
    model = build().eval()
    plan = prunekit.prune_(copy.deepcopy(model), x, ratio=0.5).plan
    shifted = copy.deepcopy(plan)
    name = "rnn.weight_hh_l1_reverse"
    shifted.removed[name][1] = [(i + 1) % HIDDEN for i in shifted.removed[name][1]]
    assert _oracle_or_inf(model, shifted, x) > 1e-2


# -- MACs -------------------------------------------------------------------------------------------


def _analytic_macs(rnn: nn.RNNBase, steps: int) -> int:
    """Every weight matrix (ih, hh, hr) of every layer and direction, once per (time, batch) step."""
    return sum(steps * p.numel() for p in rnn.parameters() if p.dim() == 2)


@pytest.mark.parametrize("cell,proj,packed", [(nn.LSTM, 0, False), (nn.LSTM, 0, True), (nn.LSTM, 3, False),
                                              (nn.GRU, 0, False), (nn.RNN, 0, True)])
def test_macs_counted(cell, proj, packed):
    """Real forward (CPU LSTM runs the fused mkldnn_rnn_layer), meta forward and the formula agree."""
    kw = {"proj_size": proj} if proj else {}
    rnn = cell(IN, HIDDEN, 2, bidirectional=True, **kw).eval()
    x = torch.randn(T, B, IN)
    steps = T * B
    if packed:
        x = pack_padded_sequence(x, LENGTHS)
        steps = int(LENGTHS.sum())
    counter = MacCounter()
    with torch.no_grad(), counter:
        rnn(x)
    assert counter.macs == _analytic_macs(rnn, steps)
    if not packed:  # packing needs real lengths: no meta forward
        meta = MacCounter()
        meta_forward(rnn, (x,), {}, counter=meta)
        assert meta.macs == counter.macs
    with FlopCounterMode(display=False) as fcm:
        rnn(x)
    fused = cell is nn.LSTM and not proj and not packed  # FlopCounterMode has no formula for mkldnn_rnn_layer
    assert fcm.get_total_flops() // 2 == (0 if fused else counter.macs)
    with FlopCounterMode(display=False, custom_mapping=RNN_FLOP_FORMULAS) as fcm:
        rnn(x)
    assert fcm.get_total_flops() // 2 == counter.macs


@pytest.mark.parametrize("batch_sizes", [[], [3, 3, 2, 2, 1]])
def test_cudnn_rnn_formula(batch_sizes):
    """``aten._cudnn_rnn`` (no GPU here): the formula on the op's argument shapes, padded and packed."""
    rnn = nn.LSTM(IN, HIDDEN, 2, bidirectional=True, proj_size=3)
    weights = [p for p in rnn.parameters()]
    x = torch.empty(11, IN) if batch_sizes else torch.empty(T, B, IN)
    steps = 11 if batch_sizes else T * B
    rest = [0, None, None, None, 2, HIDDEN, 3, 2, False, 0.0, False, True, batch_sizes, None]
    flops = RNN_FLOP_FORMULAS[torch.ops.aten._cudnn_rnn](x, weights, *rest)
    assert flops == 2 * _analytic_macs(rnn, steps)
    shapes = RNN_FLOP_FORMULAS[torch.ops.aten._cudnn_rnn](x.shape, [w.shape for w in weights], *rest)
    assert shapes == flops
