"""llm/gram.py: the symmetric Gram update used for SparseGPT's Hessians."""
from __future__ import annotations

import pytest
import torch

from prunekit.llm.gram import add_gram_


@pytest.mark.parametrize("n,width", [(7, 3), (64, 256), (300, 64), (257, 256)])
def test_equals_the_full_product_and_is_symmetric(n, width):
    g = torch.Generator().manual_seed(n)
    h = torch.zeros(n, n, dtype=torch.float64)
    want = torch.zeros(n, n, dtype=torch.float64)
    for _ in range(3):  # accumulates over calls
        x = torch.randn(40, n, generator=g, dtype=torch.float64)
        add_gram_(h, x, width=width)
        want += x.t() @ x
    assert torch.allclose(h, want, rtol=1e-12, atol=1e-10)
    assert torch.equal(h, h.t())


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="do not match"):
        add_gram_(torch.zeros(5, 5), torch.randn(3, 4))
