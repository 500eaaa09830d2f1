"""Table of small networks, one per op family: the oracle must hold on every exact group."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import assert_oracle


class ConvBlock(nn.Module):  # conv / bn / relu / residual / concat / chunk / flatten / linear
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.b2 = nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 8, 1)
        self.c4 = nn.Conv2d(24, 12, 1)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = y + F.relu(self.b2(self.c2(y)))  # residual
        z = torch.cat([y, self.c3(y)], dim=1)  # concat
        z = self.c4(z)
        a, b = z.chunk(2, dim=1)  # equal split
        z = torch.cat([b, a], 1)
        z = F.adaptive_avg_pool2d(z, 4)
        return self.fc(z.flatten(1))


class Grouped(nn.Module):  # grouped, depthwise, transposed, 1d and 3d convs
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.g = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.ct = nn.ConvTranspose2d(32, 8, 2, stride=2)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(F.relu(self.ct(F.relu(self.dw(F.relu(self.g(F.relu(self.c1(x)))))))))


class Conv1d3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(4, 12, 3)
        self.b = nn.Conv1d(12, 6, 3)
        self.c = nn.Conv3d(2, 10, 1)
        self.d = nn.Conv3d(10, 3, 1)

    def forward(self, x, v):
        return self.b(torch.tanh(self.a(x))), self.d(F.gelu(self.c(v)))


class Shuffle(nn.Module):  # channel shuffle by view/transpose/view, nn.ChannelShuffle, pixel shuffle
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.c2 = nn.Conv2d(16, 16, 1)
        self.sh = nn.ChannelShuffle(2)
        self.c3 = nn.Conv2d(16, 16, 1)
        self.c4 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        y = F.relu(self.sh(self.c2(y)))
        y = F.pixel_shuffle(F.relu(self.c3(y)), 2)
        return self.c4(y)


class Norms(nn.Module):  # instance/group norm (whole groups), PReLU, interpolate, pooling
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3)
        self.gn = nn.GroupNorm(4, 16)
        self.c2 = nn.Conv2d(16, 8, 3)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.act = nn.PReLU(8)
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.gn(self.c1(x))
        y = F.max_pool2d(F.relu(y), 2)
        y = self.act(self.inorm(self.c2(y)))
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear")
        return self.c3(y)


class ParamUse(nn.Module):  # nn.Parameters used directly: scale, class token, position embedding
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 9, 16))
        self.up = nn.Linear(16, 32)
        self.gamma = nn.Parameter(torch.rand(32) + 0.5)
        self.down = nn.Linear(32, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, ids):
        x = self.emb(ids)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = x + self.down(F.silu(self.up(x)) * self.gamma)
        return self.out(x[:, 0])


class Heads(nn.Module):  # attention reshapes with matmul / einsum / sdpa with grouped-query attention
    def __init__(self, d=32, nh=4, nkv=2):
        super().__init__()
        self.nh, self.nkv, self.head_dim = nh, nkv, d // nh
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, self.nkv * self.head_dim, bias=False)
        self.v = nn.Linear(d, self.nkv * self.head_dim, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.q2 = nn.Linear(d, d)
        self.k2 = nn.Linear(d, d)
        self.v2 = nn.Linear(d, d)
        self.o2 = nn.Linear(d, d)
        self.fc = nn.Linear(d, 4)

    def forward(self, x):
        B, T, C = x.shape
        q = self.q(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, scale=0.3)  # (B, nh, T, hd)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, -1))
        q = self.q2(x).view(B, T, self.nh, -1).transpose(1, 2)
        k = self.k2(x).view(B, T, self.nh, -1).transpose(1, 2)
        v = self.v2(x).view(B, T, self.nh, -1).transpose(1, 2)
        att = torch.einsum("bhqd,bhkd->bhqk", q, k) * 0.3
        y = att.softmax(-1) @ v  # (B, nh, T, hd)
        x = x + self.o2(y.transpose(1, 2).reshape(B, T, C))
        return self.fc(x.mean(1))


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.att = nn.MultiheadAttention(16, 4, batch_first=True)
        self.mlp1 = nn.Linear(16, 24)
        self.mlp2 = nn.Linear(24, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        x = self.inp(x)
        x = x + self.att(x, x, x, need_weights=False)[0]
        x = x + self.mlp2(F.gelu(self.mlp1(x)))
        return self.out(x)


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.emb = nn.Linear(5, 12)
        self.rnn = cell(12, 16, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.rnn(torch.relu(self.emb(x)))
        return self.fc(out[:, -1])


class RecurrentState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(5, 10, num_layers=1, bidirectional=True)
        self.fc = nn.Linear(20, 3)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.fc(torch.cat([h[-2], h[-1]], dim=1))


class StackNorm(nn.Module):  # RMSNorm (approximate over its dim), stack, grouped transposed conv
    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(6, 16)
        self.norm = nn.RMSNorm(16)
        self.lin2 = nn.Linear(16, 8)
        self.lin3 = nn.Linear(16, 8)
        self.lin4 = nn.Linear(8, 3)
        self.c1 = nn.Conv2d(3, 8, 1)
        self.ct = nn.ConvTranspose2d(8, 16, 2, stride=2, groups=4)
        self.c2 = nn.Conv2d(16, 2, 1)

    def forward(self, x, img):
        h = self.norm(self.lin1(x))
        y = torch.stack([F.relu(self.lin2(h)), self.lin3(h)], dim=1)  # (B, 2, 8)
        return self.lin4(y), self.c2(F.relu(self.ct(F.relu(self.c1(img)))))


CASES = {
    "rmsnorm_stack_grouped_transposed": (StackNorm, lambda: (torch.randn(2, 6), torch.randn(1, 3, 4, 4)), 3),
    "conv_residual_concat_chunk_flatten": (ConvBlock, lambda: (torch.randn(2, 3, 16, 16),), 3),
    "grouped_depthwise_transposed": (Grouped, lambda: (torch.randn(2, 3, 8, 8),), 3),
    "conv1d_conv3d": (Conv1d3d, lambda: (torch.randn(2, 4, 20), torch.randn(1, 2, 3, 4, 4)), 2),
    "channel_and_pixel_shuffle": (Shuffle, lambda: (torch.randn(2, 3, 6, 6),), 2),
    "norms_prelu_resample": (Norms, lambda: (torch.randn(2, 3, 14, 14),), 2),
    "parameters_in_forward": (ParamUse, lambda: (torch.randint(0, 50, (2, 8)),), 2),
    "heads_gqa_einsum_matmul": (Heads, lambda: (torch.randn(2, 5, 32),), 2),
    "multihead_attention": (MHA, lambda: (torch.randn(2, 7, 6),), 1),
    "lstm_bidirectional_2_layers": (lambda: Recurrent(nn.LSTM), lambda: (torch.randn(2, 6, 5),), 2),
    "gru_bidirectional_2_layers": (lambda: Recurrent(nn.GRU), lambda: (torch.randn(2, 6, 5),), 2),
    "gru_final_state": (RecurrentState, lambda: (torch.randn(6, 2, 5),), 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_oracle_holds(case):
    build, inputs, min_groups = CASES[case]
    model = build().eval()
    assert_oracle(model, inputs(), min_groups=min_groups)


def test_multihead_attention_prunes_whole_heads_exactly():
    """The table's MHA case passes on its MLP group alone; this asks for the heads themselves."""
    import copy

    import prunekit

    torch.manual_seed(0)
    model, x = MHA().eval(), torch.randn(2, 7, 6)
    graph = prunekit.trace(model, x)
    heads = [g for g in graph.groups() if g.kind == "head"]
    assert len(heads) == 1 and len(heads[0]) == 4 and heads[0].exact
    _, _, plan = assert_oracle(model, (x,), kinds=("head",), min_groups=1)
    hard = prunekit.apply_plan(copy.deepcopy(model), plan, "hard")
    assert (hard.att.num_heads, hard.att.embed_dim, hard.att.head_dim) == (2, 8, 4)
