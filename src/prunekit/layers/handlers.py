"""Registry of layer handlers keyed by module type (or class name, for optional libraries).

A handler ``fn(module)`` rewrites the module's size attributes (``in_features``,
``out_channels``, ``num_features`` ...) from its already-sliced parameters, so the module
prints, reloads and runs like a freshly built one.
"""
from __future__ import annotations

from typing import Callable

from torch import nn
from .. import compat

Handler = Callable[[nn.Module], None]
HANDLERS: dict[type | str, Handler] = {}


def layer_handler(*types: type | str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for t in types:
            HANDLERS[t] = fn
        return fn

    return register


def update_module(module: nn.Module) -> None:
    for cls in type(module).__mro__:
        fn = HANDLERS.get(cls) or HANDLERS.get(cls.__name__)
        if fn is not None:
            fn(module)
            return


@layer_handler(nn.Linear)
def _linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


@layer_handler(nn.Bilinear)
def _bilinear(m: nn.Bilinear) -> None:
    m.out_features, m.in1_features, m.in2_features = m.weight.shape


@layer_handler(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(m) -> None:
    m.out_channels = m.weight.shape[0]
    m.in_channels = m.weight.shape[1] * m.groups


@layer_handler(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_t(m) -> None:
    m.in_channels = m.weight.shape[0]
    m.out_channels = m.weight.shape[1] * m.groups


@layer_handler(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
               nn.InstanceNorm3d, nn.SyncBatchNorm)
def _bn(m) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = t.shape[0]


@layer_handler(nn.LayerNorm, nn.RMSNorm)
def _ln(m) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


@layer_handler(nn.GroupNorm)
def _gn(m: nn.GroupNorm) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


@layer_handler(nn.Embedding)
def _emb(m: nn.Embedding) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@layer_handler(nn.PReLU)
def _prelu(m: nn.PReLU) -> None:
    m.num_parameters = m.weight.numel()


@layer_handler(nn.MultiheadAttention)
def _mha(m: nn.MultiheadAttention) -> None:
    m.embed_dim = m.in_proj_weight.shape[1]
    m.kdim = m.vdim = m.embed_dim
    m.head_dim = m.embed_dim // m.num_heads


_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@layer_handler(nn.RNNBase)
def _rnn(m: nn.RNNBase) -> None:
    """``weight_ih_l0`` is (gates * hidden_size, input_size); ``weight_hr_l0`` (proj_size, hidden_size)."""
    m.input_size = m.weight_ih_l0.shape[1]
    m.hidden_size = m.weight_ih_l0.shape[0] // _RNN_GATES[m.mode]
    if getattr(m, "proj_size", 0) > 0:
        m.proj_size = m.weight_hr_l0.shape[0]
    compat.refresh_rnn_flat_weights(m)  # _flat_weights must hold the new Parameters
    m.flatten_parameters()  # cuDNN's packed buffer (a no-op off CUDA)


@layer_handler("Conv1D")  # transformers.pytorch_utils.Conv1D: weight is (in, out)
def _hf_conv1d(m) -> None:
    m.nf = m.weight.shape[1]
    if hasattr(m, "nx"):
        m.nx = m.weight.shape[0]
