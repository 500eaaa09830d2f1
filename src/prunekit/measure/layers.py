"""Per-layer numbers: parameters, MACs, saved-file bytes and self latency of every module that
owns state or runs counted ops itself, by module path.

Attribution is *self*: an op belongs to the innermost module whose forward is running when it
runs (a module's children report their own share), so the layers' MACs add up to the model's and
their file bytes add up to the saved state. The stack of running modules comes from forward
pre/post hooks on the model's own modules (removed afterwards).

Latency per layer is timed with the same hooks (``time.perf_counter`` around each call, children
subtracted), repeated and reduced to the median per layer. Hooks, not the torch profiler: the
profiler records an event per ATen op (microseconds each, more than a small layer's work) and
would still need a ``record_function`` scope per module to group them; hooks time the module as
it runs, at one clock read per call boundary. CPU ops are synchronous, so the clock brackets the
work; on CUDA every boundary synchronizes, which slows the run down but keeps the split honest.
The layers' times add up to less than the whole model's: parameter-free modules (activations,
pooling) and the hooks' own overhead are not in any listed layer.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .counting import MacCounter, flop_rule, flops_of
from .latency import num_threads
from .size import state_bytes


@dataclass(frozen=True)
class LayerMeasurement:
    path: str  # module path ("" is the model itself)
    type: str  # module class name
    shape: tuple[int, ...] | None  # shape of the module's first own parameter (weight), None without one
    params: int  # own parameters (tied ones counted once, at their first module)
    macs: int  # MACs of ops run in this module's own forward (not its children's)
    file_bytes: int  # bytes of its state in the saved safetensors file
    latency_ms: float | None = None  # median self time of one forward (hooks), None when not measured

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape) if self.shape is not None else None
        return d


@contextlib.contextmanager
def _module_hooks(model: nn.Module, enter: Callable[[str], None], leave: Callable[[str], None]) -> Iterator[None]:
    """Call ``enter(path)`` / ``leave(path)`` around every module's forward (the hooks return None,
    so inputs and outputs pass through untouched)."""
    def pre(path: str) -> Callable[..., None]:
        return lambda _m, _args: (enter(path), None)[1]

    def post(path: str) -> Callable[..., None]:
        return lambda _m, _args, _out: (leave(path), None)[1]

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre(path)))
        handles.append(module.register_forward_hook(post(path)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _SelfMacs(MacCounter):
    """A :class:`MacCounter` that also credits every op to the innermost running module."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = [""]
        self.by_path: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = flop_rule(func)
        if rule is not None:
            flops = flops_of(rule, args, kwargs, out)
            self.flops += flops
            self.by_path[self.stack[-1]] += flops
        return out


def _self_macs(model: nn.Module, inputs: tuple, kwargs: Mapping[str, Any]) -> dict[str, int]:
    counter = _SelfMacs()
    with _module_hooks(model, counter.stack.append, lambda _p: counter.stack.pop()):
        with torch.no_grad(), counter:
            model(*inputs, **kwargs)
    return {p: f // 2 for p, f in counter.by_path.items()}


class _SelfTimer:
    """Self wall time per module path over one forward: inclusive time minus the children's."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.stack: list[list] = []  # [path, start, children's inclusive time]
        self.times: dict[str, float] = defaultdict(float)

    def enter(self, path: str) -> None:
        self.sync()
        self.stack.append([path, time.perf_counter(), 0.0])

    def leave(self, path: str) -> None:
        self.sync()
        _, start, children = self.stack.pop()
        inclusive = time.perf_counter() - start
        self.times[path] += inclusive - children
        if self.stack:
            self.stack[-1][2] += inclusive


def _self_latency(model: nn.Module, inputs: tuple, kwargs: Mapping[str, Any], *, threads: int | None, warmup: int,
                  repeats: int) -> dict[str, float]:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runs: list[dict[str, float]] = []
    with num_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            model(*inputs, **kwargs)
        for _ in range(repeats):
            timer = _SelfTimer(sync)
            with _module_hooks(model, timer.enter, timer.leave):
                model(*inputs, **kwargs)
            runs.append(timer.times)
    paths = {p for r in runs for p in r}
    return {p: statistics.median(r.get(p, 0.0) for r in runs) * 1e3 for p in paths}


def measure_layers(model: nn.Module, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None, *,
                   latency: bool = True, threads: int | None = 2, warmup: int = 5,
                   repeats: int = 30) -> list[LayerMeasurement]:
    """Per-layer parameters, MACs, file bytes and (``latency=True``) median self latency, in module
    order, for every module that owns parameters, saved buffers, or counted ops of its own.

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    >>> print([(l.path, l.params, l.macs) for l in measure_layers(net, torch.randn(1, 3, 6, 6), latency=False)])
    [('0', 224, 3456), ('3', 1290, 1280)]
    """
    from ..graph.tracer import as_inputs  # the graph imports measure.counting: import at call time

    inputs = as_inputs(example_inputs)
    kwargs = dict(example_kwargs or {})
    was = model.training
    model.eval()
    try:
        macs = _self_macs(model, inputs, kwargs)
        times = _self_latency(model, inputs, kwargs, threads=threads, warmup=warmup, repeats=repeats) if latency \
            else {}
    finally:
        model.train(was)
    file_bytes: dict[str, int] = defaultdict(int)
    for key, n in state_bytes(model).items():
        file_bytes[key.rpartition(".")[0]] += n  # "features.0.weight" -> module "features.0"
    out, seen = [], set()
    for path, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        first = next(module.parameters(recurse=False), None)
        if not (own or file_bytes.get(path) or macs.get(path)):
            continue
        out.append(LayerMeasurement(path, type(module).__name__, tuple(first.shape) if first is not None else None,
                                    sum(p.numel() for p in own), macs.get(path, 0), file_bytes.get(path, 0),
                                    times.get(path, 0.0) if latency else None))
    return out
