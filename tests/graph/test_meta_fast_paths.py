"""Shape-only answers of the meta trace (execute._meta_reduction / _meta_interpolate / _meta_unary and the
0-d shadow results) give what torch's own meta path gives: shape, strides and dtype, for every form tried."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from prunekit.graph.execute import ShapeOnly, _meta_interpolate, _meta_reduction, _meta_unary
from prunekit.graph.shadows import Shadows


def _same(out, ref) -> bool:
    return out.is_meta and out.shape == ref.shape and out.stride() == ref.stride() and out.dtype == ref.dtype


SHAPES = [(1, 16), (16, 1), (2, 5, 7), (1, 32, 8, 8), (4, 1, 1), (3,), (1,), ()]


def _layouts(shape, dtype=torch.float32):
    x = torch.empty(shape, device="meta", dtype=dtype)
    return [x] + ([x.transpose(0, -1)] if x.dim() > 1 else [])


def test_reductions_match_torch_meta():
    hits = 0
    for shape in SHAPES:
        for x in _layouts(shape) + _layouts(shape, torch.int64):
            nd = x.dim()
            dims = [d for r in range(1, nd + 1) for d in itertools.combinations(range(-nd, nd), r)] + [None, (0, 0), []]
            for name, dim, kw in itertools.product(("mean", "sum", "amax", "amin"), dims, ({}, {"keepdim": True})):
                args = (x,) if dim is None else (x, dim)
                try:
                    ref = getattr(torch, name)(*args, **kw)
                except Exception:  # noqa: BLE001 - torch refuses: the fast path must leave it to torch
                    ref = None
                out = _meta_reduction(name, args, kw)
                if out is not None:
                    hits += 1
                    assert ref is not None and _same(out, ref), (name, shape, x.stride(), dim, kw)
    assert hits > 500  # the fast path is taken (a path that always declines would pass the loop above)


@pytest.mark.parametrize("shape", [(1, 16, 8, 8), (2, 5, 7, 3), (1, 8, 9), (1, 4, 3, 5, 6), (2, 3, 1, 1)])
def test_interpolate_matches_torch_meta(shape):
    x = torch.empty(shape, device="meta")
    nd = len(shape) - 2
    modes = ["nearest", "nearest-exact", "area"] + {1: ["linear"], 2: ["bilinear", "bicubic"], 3: ["trilinear"]}[nd]
    hits = 0
    for mode in modes:
        for kw in [dict(scale_factor=2), dict(scale_factor=0.5), dict(scale_factor=1.7), dict(size=5),
                   dict(scale_factor=2.5, recompute_scale_factor=True), dict(size=tuple([9] * nd))]:
            for corners in ([None] if mode in ("nearest", "nearest-exact", "area") else [None, True, False]):
                try:
                    ref = F.interpolate(x, mode=mode, align_corners=corners, **kw)
                except Exception:  # noqa: BLE001
                    continue
                out = _meta_interpolate(F.interpolate, (x,), dict(mode=mode, align_corners=corners, **kw))
                if out is not None:
                    hits += 1
                    assert _same(out, ref), (mode, kw, corners)
    assert hits > 0 or shape[2:] == (1, 1)  # (.., 1, 1) could read as channels-last: left to torch


def test_unary_fast_paths_match_torch_meta():
    hits = 0
    for shape in SHAPES + [(0, 3), (2, 1, 3, 1)]:
        for dtype in (torch.float32, torch.float16, torch.int64, torch.bool):
            for x in _layouts(shape, dtype):
                for name, func, args, kw in [("pow", torch.pow, (x, 2), {}), ("pow", torch.pow, (x, 3.0), {}),
                                             ("__pow__", torch.Tensor.__pow__, (x, 2), {}),
                                             ("cumsum", torch.cumsum, (x, -1), {}),
                                             ("cumsum", torch.cumsum, (x,), {"dim": 0}),
                                             ("cumsum", torch.cumsum, (x, 0), {"dtype": torch.float64})]:
                    try:
                        ref = func(*args, **kw)
                    except Exception:  # noqa: BLE001
                        ref = None
                    out = _meta_unary(name, args, kw)
                    if out is not None:
                        hits += 1
                        assert ref is not None and _same(out, ref), (name, shape, dtype, x.stride(), args[1:], kw)
        for ids in _layouts(shape, torch.int64):
            weight = torch.empty(10, 6, device="meta")
            for args, kw in [((ids, weight), {}), ((ids, weight, 0), {}), ((ids, weight, None, 1.0), {})]:
                try:
                    ref = F.embedding(*args, **kw)
                except Exception:  # noqa: BLE001
                    ref = None
                out = _meta_unary("embedding", args, kw)
                if out is not None:
                    hits += 1
                    assert ref is not None and _same(out, ref), ("embedding", shape, ids.stride(), args[2:])
    assert hits > 50


def test_default_strides_negative_control():
    """A transposed input is not answered by shape (its meta result's strides follow the input)."""
    x = torch.empty(4, 6, device="meta").t()
    assert _meta_unary("pow", (x, 2), {}) is None
    assert _meta_reduction("mean", (x, 0), {}) is None
    assert _meta_unary("pow", (torch.empty(4, 6, device="meta"), 2), {}) is not None


def test_zero_dim_shadow_results_match_torch_meta():
    """``torch.all(mask == 1)`` on a shadowed mask: the 0-d result comes from the real value, as torch's
    meta path would shape it; a larger comparison keeps the meta path (same strides as without shadows)."""
    mask = torch.ones(1, 16, dtype=torch.int64)
    shadows = Shadows()
    meta = mask.to("meta")
    shadows.add(meta, mask.clone())
    mode = ShapeOnly(shadows=shadows)
    eq = mode.call(torch.Tensor.__eq__, (meta, 1), {})
    assert _same(eq, meta == 1)  # the meta path: size-1 dims strided as torch's reference code does
    every = mode.call(torch.all, (eq,), {})
    assert _same(every, torch.all(meta == 1)) and shadows.of(every) is not None and bool(shadows.of(every))
