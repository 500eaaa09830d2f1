"""Every use of torch internals (private modules, attributes and behaviours no public API offers) in one
place, each a thin wrapper that says what it assumes; ``tests/test_compat.py`` checks every assumption
against the installed torch, so a torch upgrade that breaks one fails there, by name.

Used by the graph (meta execution, tracing) and by measurement (MAC counting, peak memory).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import flop_registry, sdpa_flop_count, shape_wrapper

__all__ = ["BATCH_NORM", "CONV", "CONV_TRANSPOSE", "MODULE_CALL_FRAME", "PROFILER_NOISE", "SHAPE_WRAPPED",
           "SharedHooks", "TorchDispatchMode", "aten_op", "dispatch_modes", "flop_registry", "module_slots",
           "overload_packet", "quiet_profiler_stderr", "refresh_rnn_flat_weights", "sdpa_flop_count", "tree_leaves",
           "tree_map"]

# --- dispatch (torch.utils._python_dispatch) -------------------------------------------------------
# TorchDispatchMode: a mode whose __torch_dispatch__ sees every ATen op (MAC counting is one).


def dispatch_modes() -> list[TorchDispatchMode]:
    """The dispatch modes now active, outermost first (``_get_current_dispatch_mode_stack``)."""
    return list(_get_current_dispatch_mode_stack())


def overload_packet(func: Any) -> Any:
    """The ``OpOverloadPacket`` of an ATen ``OpOverload`` (``aten.mm.default`` -> ``aten.mm``), the
    key of ``flop_registry``."""
    return func._overloadpacket


def aten_op(name: str) -> Any:
    """``torch.ops.aten.<name>``, for the private kernels counted by name (``_cudnn_rnn``,
    ``_native_multi_head_attention``, ``_scaled_dot_product_flash_attention_for_cpu``)."""
    return getattr(torch.ops.aten, name)


# --- FLOP formulas (torch.utils.flop_counter internals) --------------------------------------------
# flop_registry: {OpOverloadPacket: formula(*args, out_val=..., **kwargs) -> FLOPs};
# sdpa_flop_count(q_shape, k_shape, v_shape) -> FLOPs of one attention.
# SHAPE_WRAPPED: the code of the wrapper torch puts around most formulas (it maps tensors to shapes
# with pytree, costlier than the op); the formula itself is its ``__wrapped__`` and takes shapes.
SHAPE_WRAPPED = shape_wrapper(lambda: None).__code__

# --- nn.Module internals ---------------------------------------------------------------------------
# The frame name of nn.Module.__call__'s body: its locals hold ``self``, ``args`` and ``kwargs``.
MODULE_CALL_FRAME = "_call_impl"
# Base classes: every convolution; every transposed one (its weight is (in, out / groups, *kernel));
# every batch norm (BatchNorm1d/2d/3d, SyncBatchNorm, the lazy ones).
CONV = nn.modules.conv._ConvNd
CONV_TRANSPOSE = nn.modules.conv._ConvTransposeNd
BATCH_NORM = nn.modules.batchnorm._BatchNorm


def module_slots(mod: nn.Module) -> tuple[dict, dict, dict]:
    """A module's own ``_parameters``, ``_buffers`` and ``_modules`` dicts: assigning into them
    swaps a tensor without registration checks (the meta stand-ins rely on that)."""
    return mod._parameters, mod._buffers, mod._modules


class SharedHooks:
    """One forward pre-hook and one ``always_call`` forward hook on each of ``modules``, entered in the
    modules' hook dicts as ``register_forward_pre_hook`` / ``register_forward_hook(always_call=True)``
    enter them, under one handle id per kind for all modules (a ``RemovableHandle`` per module and hook
    costs ~2.5 us: 3 ms on a model of 1,300 modules); :meth:`remove` takes them out again."""

    def __init__(self, modules: list[nn.Module], pre, post) -> None:
        from torch.utils.hooks import RemovableHandle

        self.pre_id = RemovableHandle.next_id  # ids no other handle gets (drawn as RemovableHandle draws them)
        self.post_id = self.pre_id + 1
        RemovableHandle.next_id += 2
        self.modules = modules
        for m in modules:
            m._forward_pre_hooks[self.pre_id] = pre
            m._forward_hooks[self.post_id] = post
            m._forward_hooks_always_called[self.post_id] = True

    def remove(self) -> None:
        for m in self.modules:
            m._forward_pre_hooks.pop(self.pre_id, None)
            m._forward_hooks.pop(self.post_id, None)
            m._forward_hooks_always_called.pop(self.post_id, None)
        self.modules = []


def refresh_rnn_flat_weights(rnn: nn.RNNBase) -> None:
    """Re-point an RNN's cached flat weight list (``_flat_weights``) at its current parameters, after
    they were replaced (``_init_flat_weights``)."""
    rnn._init_flat_weights()


# --- profiler (kineto) ------------------------------------------------------------------------------
# What the profiler's C++ side (kineto) prints on every start/stop of a CPU-only profile.
PROFILER_NOISE = re.compile(r"USDT:|SyncActivityProfilerHandler|gpuGetDeviceCount|profiler_(start|stop)")


@contextlib.contextmanager
def quiet_profiler_stderr() -> Iterator[None]:
    """Hold back the profiler's own status lines, which kineto writes to file descriptor 2
    (no Python setting silences them); any other line written meanwhile is passed on."""
    fd = 2  # kineto writes to the process's standard error, whatever ``sys.stderr`` is now
    try:
        saved = os.dup(fd)
    except OSError:  # no standard error at all
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not PROFILER_NOISE.search(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()

