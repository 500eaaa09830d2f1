"""Peak memory of one inference, from torch's own profiler (CPU allocator events)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ..compat import quiet_profiler_stderr


def tensor_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (tied tensors counted once)."""
    seen, total = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def peak_activation_bytes(model: nn.Module, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None) -> int:
    """Peak bytes allocated *during* one eval forward (activations and workspaces, not weights).

    Every allocation and free the profiler records (``profile_memory=True``) is replayed in
    time order; the peak of the running total is the answer.
    """
    from ..graph.tracer import as_inputs  # the graph imports measure.counting: import at call time

    inputs = as_inputs(example_inputs)
    was = model.training
    model.eval()
    try:
        with quiet_profiler_stderr(), torch.inference_mode(), \
                profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(*inputs, **dict(example_kwargs or {}))
    finally:
        model.train(was)
    events = sorted((e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start)
    # an op's cpu_memory_usage is its net allocation (children included): use leaf-level self numbers
    running = peak = 0
    for e in events:
        if e.cpu_children:
            continue
        running += e.cpu_memory_usage
        peak = max(peak, running)
    return peak


def peak_memory(model: nn.Module, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None) -> int:
    """Weights and buffers plus the peak of what one forward allocates, in bytes."""
    return tensor_bytes(model) + peak_activation_bytes(model, example_inputs, example_kwargs)
