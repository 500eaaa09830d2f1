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
