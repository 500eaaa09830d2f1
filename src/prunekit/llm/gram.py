"""``H += Xᵀ X`` computed on the upper block triangle only, then mirrored.

The Hessian of a Linear's inputs is symmetric, so half of a full ``addmm`` is wasted work; BLAS's
``syrk`` is not exposed by torch. Splitting the columns into bands of about ``width`` and computing
each band's row ``H[band, band:]`` as one GEMM does ``(1 + 1/bands)/2`` of the work in large,
efficient products. On this 2-core AVX2 machine, ``[16384, 1536]`` inputs: 683 ms instead of 1134 ms;
``[16384, 576]``: 111 ms instead of 156 ms.

>>> x = torch.randn(50, 7); h = torch.zeros(7, 7)
>>> add_gram_(h, x, width=3) is h, torch.allclose(h, x.t() @ x, atol=1e-4), torch.equal(h, h.t())
(True, True, True)
"""
from __future__ import annotations

import torch


def add_gram_(h: torch.Tensor, x: torch.Tensor, *, width: int = 256) -> torch.Tensor:
    """Add ``xᵀ x`` (``x``: ``[tokens, n]``) to the symmetric ``h`` ``[n, n]`` in place and return it;
    ``h`` stays exactly symmetric."""
    n = x.shape[1]
    if h.shape != (n, n):
        raise ValueError(f"llm.gram: inputs with {n} columns do not match a {tuple(h.shape)} matrix")
    bands = max(1, -(-n // width))  # ceil(n / width)
    edges = [n * i // bands for i in range(bands + 1)]
    for a, b in zip(edges, edges[1:]):
        h[a:b, a:].addmm_(x[:, a:b].t(), x[:, a:])  # (b - a, n - a): this band's row, diagonal block onwards
    for a, b in zip(edges, edges[1:]):
        h[b:, a:b] = h[a:b, b:].t()  # mirror the band's off-diagonal part below the diagonal
        blk = h[a:b, a:b]
        blk.copy_(torch.triu(blk) + torch.triu(blk, 1).t())  # the diagonal block: exactly symmetric
    return h
