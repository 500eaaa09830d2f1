"""Recurrent nets: nn.LSTM / nn.GRU / nn.RNN, 1-3 layers, uni/bidirectional, embedding or dense input,
packed sequences, read through the outputs, ``h_n`` or ``c_n``, with and without ``proj_size``."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .spec import Built, Spec

VOCAB, EMB, HIDDEN, T, B = 50, 32, 48, 12, 2


class RNNNet(nn.Module):
    def __init__(self, cell: str, layers: int, bidirectional: bool, *, embed: bool = True, batch_first: bool = True,
                 packed: bool = False, read: str = "out", proj: int = 0):
        super().__init__()
        self.embed, self.batch_first, self.packed, self.read = embed, batch_first, packed, read
        self.inp = nn.Embedding(VOCAB, EMB) if embed else nn.Linear(8, EMB)
        kw = {"proj_size": proj} if proj else {}
        self.rnn = getattr(nn, cell)(EMB, HIDDEN, num_layers=layers, bidirectional=bidirectional,
                                     batch_first=batch_first, **kw)
        dirs = 2 if bidirectional else 1
        width = (proj or HIDDEN) * (dirs if read == "out" else 1)
        if read == "c_n":
            width = HIDDEN
        self.head = nn.Linear(width, 10)
        self.register_buffer("lengths", torch.tensor([T, T - 4]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)  # (B, T, EMB) batch-first
        if not self.batch_first:
            h = h.transpose(0, 1)  # (T, B, EMB)
        if self.packed:
            h = nn.utils.rnn.pack_padded_sequence(h, self.lengths, batch_first=self.batch_first, enforce_sorted=True)
        out, state = self.rnn(h)
        if self.read == "out":
            if self.packed:
                out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=self.batch_first)
            last = out[:, 0] if self.batch_first else out[0]  # first step: valid for every sequence
            return self.head(last)
        h_n = state[0] if isinstance(state, tuple) else state
        if self.read == "c_n":
            return self.head(state[1][-1])  # (B, HIDDEN): last layer, last direction
        return self.head(h_n[-1])  # (B, proj or HIDDEN)


def _inputs(embed: bool) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T)) if embed else torch.randn(B, T, 8)


def _builder(cell: str, layers: int, bidir: bool, **kw) -> Callable[[], Built]:
    def build() -> Built:
        torch.manual_seed(0)
        model = RNNNet(cell, layers, bidir, **kw).eval()
        return Built(model, (_inputs(kw.get("embed", True)),), ["head"])
    return build


_VARIANTS: dict[str, tuple[str, int, bool, dict]] = {
    "lstm_1l": ("LSTM", 1, False, {}),
    "lstm_2l_bi": ("LSTM", 2, True, {}),  # the NaN case
    "lstm_3l": ("LSTM", 3, False, {"batch_first": False}),
    "lstm_3l_bi_hn": ("LSTM", 3, True, {"read": "h_n"}),
    "lstm_2l_cn": ("LSTM", 2, False, {"read": "c_n"}),
    "lstm_2l_bi_dense": ("LSTM", 2, True, {"embed": False, "batch_first": False}),
    "lstm_2l_bi_packed": ("LSTM", 2, True, {"packed": True}),
    "lstm_2l_proj": ("LSTM", 2, False, {"proj": 16}),
    "lstm_1l_bi_proj_hn": ("LSTM", 1, True, {"proj": 16, "read": "h_n"}),
    "gru_1l_bi": ("GRU", 1, True, {}),
    "gru_2l": ("GRU", 2, False, {}),
    "gru_3l_bi_packed_hn": ("GRU", 3, True, {"packed": True, "read": "h_n"}),
    "gru_2l_dense": ("GRU", 2, False, {"embed": False}),
    "rnn_tanh_2l_bi": ("RNN", 2, True, {}),
}

SPECS: list[Spec] = [Spec(f"rnn_{n}" if not n.startswith(("rnn_",)) else n, "rnn", _builder(c, l, b, **kw))
                     for n, (c, l, b, kw) in _VARIANTS.items()]
