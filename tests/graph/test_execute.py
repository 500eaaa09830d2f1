"""The meta-device forward: shapes, MACs and errors agree with a real forward."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit.graph.execute import meta_forward
from prunekit.measure.counting import MacCounter

CONVS = [
    (nn.Conv1d(4, 6, 3, stride=2, padding=1), (2, 4, 17)),
    (nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4), (1, 8, 15, 13)),
    (nn.Conv2d(8, 8, 5, padding="same", dilation=2, groups=8, bias=False), (1, 8, 12, 12)),
    (nn.Conv2d(3, 5, (3, 1), padding="valid", stride=(1, 2)), (2, 3, 9, 9)),
    (nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"), (1, 3, 8, 8)),
    (nn.Conv3d(2, 4, 3, stride=(1, 2, 2), padding=(0, 1, 1)), (1, 2, 5, 9, 9)),
]


@pytest.mark.parametrize("conv,shape", CONVS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_meta_conv_matches_real(conv, shape):
    x = torch.randn(shape)
    counter = MacCounter()
    with counter:
        out = meta_forward(conv, (x,), {})
    with torch.no_grad(), FlopCounterMode(display=False) as real:
        ref = conv(x)
    assert out.is_meta and out.shape == ref.shape
    assert counter.macs == real.get_total_flops() // 2 > 0


def test_meta_conv_rejects_inconsistent_channels():
    conv = nn.Conv2d(8, 4, 3)
    conv.weight = nn.Parameter(torch.randn(4, 6, 3, 3))  # pruned weight, input not pruned
    with pytest.raises(RuntimeError, match="channels"):
        meta_forward(conv, (torch.randn(1, 8, 9, 9),), {})
    conv = nn.Conv2d(8, 4, 3)
    conv.bias = nn.Parameter(torch.randn(3))
    with pytest.raises(RuntimeError, match="bias"):
        meta_forward(conv, (torch.randn(1, 8, 9, 9),), {})


class _Mixed(nn.Module):
    """Convs, linear, matmul, einsum, bmm, attention (MHA and SDPA), LSTM, norms and pooling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.tconv = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.proj = nn.Linear(8, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.lstm = nn.LSTM(16, 12, num_layers=2, bidirectional=True, batch_first=True)
        self.w = nn.Parameter(torch.randn(24, 6))

    def forward(self, x):
        y = self.tconv(torch.relu(self.bn(self.conv(x))))  # (B, 8, 2H, 2W)
        t = y.flatten(2).transpose(1, 2)  # (B, L, 8)
        t = self.proj(t)  # (B, L, 16)
        a, _ = self.mha(t, t, t)
        q = a.view(a.shape[0], a.shape[1], 4, 4).transpose(1, 2)  # (B, heads, L, 4)
        s = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        g = torch.einsum("bhld,bhmd->bhlm", s, q).mean(-1)  # (B, heads, L)
        h, _ = self.lstm(a + torch.bmm(a, a.transpose(1, 2)).softmax(-1) @ a)
        return (h @ self.w).mean(1) + g.mean()


def test_function_level_counting_matches_torch_flop_counter():
    model = _Mixed().eval()
    x = torch.randn(2, 3, 6, 6)
    counter = MacCounter()
    out = meta_forward(model, (x,), {}, counter=counter)
    meta = {k: torch.empty_like(v, device="meta") for k, v in model.state_dict(keep_vars=True).items()}
    with torch.no_grad(), FlopCounterMode(display=False) as real:  # torch alone, same (meta) kernels
        ref = torch.func.functional_call(model, meta, (x.to("meta"),))
    assert out.shape == ref.shape
    assert counter.macs == real.get_total_flops() // 2 > 0
    legacy = MacCounter()  # the dispatch-mode way gives the same count
    with legacy:
        meta_forward(model, (x,), {})
    assert legacy.macs == counter.macs


@pytest.mark.parametrize("shape", [(5, 8), (2, 7, 8), (2, 3, 4, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_meta_linear_matches_real(shape, bias):
    lin = nn.Linear(8, 6, bias=bias)
    x = torch.randn(shape)
    counter = MacCounter()
    out = meta_forward(lin, (x,), {}, counter=counter)
    with torch.no_grad(), FlopCounterMode(display=False) as real:
        ref = lin(x)
    assert out.is_meta and out.shape == ref.shape
    assert counter.macs == real.get_total_flops() // 2 > 0


def test_meta_linear_rejects_inconsistent_features():
    lin = nn.Linear(8, 4)
    lin.weight = nn.Parameter(torch.randn(4, 6))  # pruned weight, input not pruned
    with pytest.raises(RuntimeError, match="features"):
        meta_forward(lin, (torch.randn(2, 8),), {})


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, device="meta", dtype=dtype)


BINARY_CASES = [
    (torch.add, (_meta(2, 3, 4), _meta(2, 3, 4))),
    (torch.mul, (_meta(1, 8, 5, 5), _meta(1, 8, 1, 1))),
    (torch.Tensor.__rsub__, (_meta(3, 1), 2.0)),
    (torch.Tensor.__truediv__, (_meta(4), 3)),
    (torch.Tensor.__mul__, (_meta(2, 2, dtype=torch.bfloat16), 0.5)),
    (torch.add, (_meta(2, 3, dtype=torch.float16), _meta(3, dtype=torch.float32))),
    (torch.Tensor.__truediv__, (_meta(4, dtype=torch.int64), 2)),  # int true division: torch's own rules
    (torch.Tensor.__add__, (_meta(4, dtype=torch.int64), 2)),
    (torch.Tensor.add_, (_meta(2, 3), _meta(3))),
    (torch.Tensor.__imul__, (_meta(2, 3), 2.0)),
]


@pytest.mark.parametrize("func,args", BINARY_CASES)
def test_shape_only_binary_ops_match_torch(func, args):
    from prunekit.graph.execute import ShapeOnly

    ref = func(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    out = ShapeOnly().call(func, args, {})
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_meta
    if func.__name__ in ("add_", "__imul__"):  # in place: the target itself
        assert out is args[0]


def test_shape_only_binary_broadcast_error_is_torchs():
    from prunekit.graph.execute import ShapeOnly

    with pytest.raises(RuntimeError):
        ShapeOnly().call(torch.add, (_meta(2, 3), _meta(4)), {})
    with pytest.raises(RuntimeError):  # in-place cannot grow its target
        ShapeOnly().call(torch.Tensor.add_, (_meta(1, 3), _meta(2, 3)), {})


@pytest.mark.parametrize("size", [1, (3, 2), (None, 2)])
def test_shape_only_adaptive_pool_matches_torch(size):
    from prunekit.graph.execute import ShapeOnly

    x = _meta(2, 4, 7, 6)
    ref = torch.nn.functional.adaptive_avg_pool2d(x, size)
    out = ShapeOnly().call(torch.nn.functional.adaptive_avg_pool2d, (x, size), {})
    assert out.shape == ref.shape and out.dtype == ref.dtype


@pytest.mark.parametrize("tensors,dim", [([_meta(2, 3, 4), _meta(2, 5, 4)], 1), ([_meta(2, 3), _meta(2, 3)], -1),
                                         ([_meta(1, 8, 4, 4)] * 3, 1), ([_meta(3, 2), _meta(3, 2, dtype=torch.float16)], 0)])
def test_shape_only_cat_matches_torch(tensors, dim):
    from prunekit.graph.execute import ShapeOnly

    ref = torch.cat(tensors, dim)
    out = ShapeOnly().call(torch.cat, (tensors, dim), {})
    assert out.shape == ref.shape and out.dtype == ref.dtype
    with pytest.raises(RuntimeError):
        ShapeOnly().call(torch.cat, ([_meta(2, 3), _meta(3, 3)], 1), {})


SDPA_CASES = [  # (q, k, v shapes, keyword arguments)
    ((2, 4, 8, 16), (2, 4, 10, 16), (2, 4, 10, 12), {}),
    ((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16), {"enable_gqa": True}),
    ((2, 4, 8, 16), (2, 4, 8, 16), (2, 4, 8, 16), {"is_causal": True}),
    ((2, 4, 8, 16), (2, 4, 8, 16), (2, 4, 8, 16), {"attn_mask": (8, 8)}),
    ((2, 4, 8, 16), (2, 4, 8, 16), (2, 4, 8, 16), {"attn_mask": (2, 1, 1, 8), "bool_mask": True}),
    ((3, 8, 16), (3, 8, 16), (3, 8, 16), {}),  # 3-d: torch's own kernels
]


@pytest.mark.parametrize("q,k,v,kw", SDPA_CASES, ids=str)
def test_meta_sdpa_matches_real(q, k, v, kw):
    """Attention answered by shape on meta: the real output's shape and the real kernel's FLOPs."""
    kw = dict(kw)
    inputs = [torch.randn(q), torch.randn(k), torch.randn(v)]
    if "attn_mask" in kw:  # an input, so the meta forward gets a meta copy of it
        shape = kw.pop("attn_mask")
        inputs.append(torch.rand(shape) > 0.3 if kw.pop("bool_mask", False) else torch.randn(shape))

    class Attn(nn.Module):
        def forward(self, q, k, v, mask=None):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw)

    counter = MacCounter()
    out = meta_forward(Attn(), tuple(inputs), {}, counter=counter)
    real = MacCounter()
    with torch.no_grad(), real:
        ref = Attn()(*inputs)
    assert out.is_meta and out.shape == ref.shape
    assert counter.macs == real.macs > 0


def test_meta_sdpa_rejects_mismatched_head_width():
    """Negative control: keys narrower than the queries (a plan that cut one side only) fail on meta too."""
    class Attn(nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    with pytest.raises(RuntimeError):
        meta_forward(Attn(), (torch.randn(1, 4, 8, 16), torch.randn(1, 4, 8, 12), torch.randn(1, 4, 8, 16)), {})
    with pytest.raises(RuntimeError):  # 4 query heads over 3 key heads
        meta_forward(Attn(), (torch.randn(1, 4, 8, 16), torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16)), {})


class _Matmuls(nn.Module):
    """The ops counted from shapes on real tensors: linear (2-d and 3-d input), conv1d/2d, mm, addmm, bmm;
    with matmul, einsum, SDPA, a transposed conv and an LSTM counted under the dispatch mode."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.tconv = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.lin = nn.Linear(4, 5)
        self.w = nn.Parameter(torch.randn(5, 7))
        self.b = nn.Parameter(torch.randn(7))
        self.lstm = nn.LSTM(7, 3, batch_first=True)

    def forward(self, x):  # x: (B, 3, 8)
        y = self.conv1(x)  # (B, 6, 8)
        z = self.tconv(self.conv2(y.unsqueeze(-1).expand(-1, -1, -1, 4)))  # (B, 4, 16, 8)
        t = self.lin(z.flatten(2).transpose(1, 2))  # (B, 128, 5)
        u = torch.addmm(self.b, t[0], self.w)  # (128, 7)
        v = torch.mm(t[0], self.w) + torch.bmm(t, self.w.expand(t.shape[0], -1, -1))[0]  # (128, 7)
        a = torch.nn.functional.scaled_dot_product_attention(t, t, t) @ self.w  # (B, 128, 7)
        h, _ = self.lstm(a + torch.einsum("ld,bld->bld", u + v, a))
        return self.lin(z.mean((2, 3))).sum() + h.mean()


def test_counting_real_forward_matches_dispatch_counter():
    """``counting``: linear/conv/mm/addmm/bmm from shapes, the rest under the dispatch mode -- the same MACs as
    the whole forward under the dispatch mode (torch's formulas), and the same outputs."""
    from prunekit.graph.execute import counting

    torch.manual_seed(0)
    model = _Matmuls().eval()
    x = torch.randn(2, 3, 8)
    full, ours = MacCounter(), MacCounter()
    with torch.no_grad(), full:
        ref = model(x)
    with torch.no_grad(), counting(ours):
        out = model(x)
    assert torch.equal(out, ref)
    assert ours.macs == full.macs > 0
    meta = MacCounter()  # the meta trace's count agrees too
    meta_forward(model, (x,), {}, counter=meta)
    assert meta.macs == full.macs


def test_counting_negative_control_wrong_formula(monkeypatch):
    """Negative control: a formula off by one FLOP per call makes the counts differ (the comparison above can fail)."""
    from prunekit.graph import execute

    formula = execute._formula
    monkeypatch.setattr(execute, "_formula", lambda name, args: (lambda f: None if f is None else
                                                                 (lambda out: f(out) + 2))(formula(name, args)))
    model = _Matmuls().eval()
    x = torch.randn(2, 3, 8)
    full, ours = MacCounter(), MacCounter()
    with torch.no_grad(), full:
        model(x)
    with torch.no_grad(), execute.counting(ours):
        model(x)
    assert ours.macs != full.macs


@pytest.mark.parametrize("name,shapes", [("mm", [(5, 4), (4, 3)]), ("addmm", [(3,), (5, 4), (4, 3)]),
                                         ("addmm", [(5, 1), (5, 4), (4, 3)]), ("bmm", [(2, 5, 4), (2, 4, 3)])])
def test_meta_matmul_matches_real(name, shapes):
    """mm/addmm/bmm answered by shape on meta: the real output's shape and torch's FLOPs."""
    from prunekit.graph.execute import ShapeOnly

    func = getattr(torch, name)
    args = [torch.randn(s) for s in shapes]
    counter = MacCounter()
    out = ShapeOnly(counter).call(func, tuple(a.to("meta") for a in args), {})
    with torch.no_grad(), FlopCounterMode(display=False) as real:
        ref = func(*args)
    assert out.is_meta and out.shape == ref.shape and out.dtype == ref.dtype
    assert counter.flops == real.get_total_flops() > 0


def test_meta_matmul_rejects_mismatched_sizes():
    """Negative control: inner sizes that do not match (a plan that cut one side only) raise on meta too; a
    call with ``beta=`` or a bias that does not broadcast is left to torch (which raises for the latter)."""
    from prunekit.graph.execute import ShapeOnly, _meta_matmul

    m = lambda *s: torch.empty(s, device="meta")  # noqa: E731
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        ShapeOnly().call(torch.mm, (m(5, 4), m(3, 3)), {})
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        ShapeOnly().call(torch.bmm, (m(2, 5, 4), m(3, 4, 3)), {})
    assert _meta_matmul("addmm", (m(4,), m(5, 4), m(4, 3))) is None  # bias (4,) does not fit (5, 3)
    with pytest.raises(RuntimeError):
        ShapeOnly().call(torch.addmm, (m(4,), m(5, 4), m(4, 3)), {})
    out = ShapeOnly().call(torch.addmm, (m(3,), m(5, 4), m(4, 3)), {"beta": 0.5})  # torch's own kernel
    assert out.shape == (5, 3)


@pytest.mark.parametrize("kv_heads,mask", [(4, False), (2, True), (1, False)])
def test_sdpa_counted_from_shapes_matches_torch(kv_heads, mask):
    """Real 4-d SDPA calls are counted by ``sdpa_flops`` on their shapes (torch's ``sdpa_flop_count``
    without its wrappers): the same MACs as the dispatch counter on the CPU kernel or math path, GQA and
    masks included; the formula equals torch's own on each shape."""
    from torch.utils.flop_counter import sdpa_flop_count

    from prunekit.graph.execute import counting, sdpa_flops

    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, kv_heads, 10, 8), torch.randn(2, kv_heads, 10, 3)
    m = torch.randn(2, 4, 6, 10) if mask else None
    f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m,  # noqa: E731
                                                                enable_gqa=kv_heads != 4)
    assert sdpa_flops(q.shape, k.shape, v.shape) == sdpa_flop_count(q.shape, k.shape, v.shape)
    full, ours = MacCounter(), MacCounter()
    with torch.no_grad(), full:
        ref = f()
    with torch.no_grad(), counting(ours):
        out = f()
    assert torch.equal(out, ref) and ours.macs == full.macs > 0
    wrong = MacCounter()  # negative control: a query with more rows counts more
    with torch.no_grad(), counting(wrong):
        torch.nn.functional.scaled_dot_product_attention(torch.randn(2, 4, 7, 8), k, v, enable_gqa=kv_heads != 4)
    assert wrong.macs != full.macs


@pytest.mark.parametrize("shapes", [[(2, 3), (3,)], [(1, 4, 1), (5, 1, 6)], [(0, 1), (1, 7)], [(), (2, 2)], [(3,)],
                                    [(4, 1, 2), (1, 3, 1), (3, 2)], [(2, 3), (4, 3)], [(0,), (2,)], [(5, 0), (1, 1)]])
def test_broadcast_shapes_is_torchs(shapes):
    """The plain-Python broadcast the meta ops use gives torch's shape, and raises where torch raises
    (negative controls: (2, 3) with (4, 3); (0,) with (2,))."""
    from prunekit.graph.execute import broadcast_shapes

    try:
        want = torch.broadcast_shapes(*shapes)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            broadcast_shapes(*shapes)
        return
    assert broadcast_shapes(*shapes) == want
