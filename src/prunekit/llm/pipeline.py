"""The sequential, layer-by-layer calibration pipeline for decoder stacks.

1. Capture the inputs of block 0 on calibration windows: the embeddings run (on ``device``), a
   pre-hook on block 0 records its hidden states and keyword arguments (attention mask, position
   ids, rotary position embeddings ...) and stops the forward. No whole-model trace is needed.
2. For each block ``i``: load it (from the model, or from ``source``), move it to ``device``, call
   ``visit(i, block, inputs)`` (collect statistics with hooks, prune, update), re-run the block on
   the hidden states to give block ``i + 1`` its inputs (from the pruned block), move it back (or
   ``source.store`` it).

Only one block and the hidden states (``[n, T, d]``) are on ``device`` at a time.

>>> def visit(i, block, inputs):
...     inputs.run(block)          # e.g. with hooks on its Linear layers
>>> run_blocks(model, windows, visit, device="cuda")   # doctest: +SKIP
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

from .arch import DecoderLayout, layout


class BlockSource(Protocol):
    """Blocks not resident in the model (e.g. loaded one at a time from safetensors shards)."""

    def load(self, i: int) -> nn.Module:
        """Block ``i`` with its weights (on any device; the pipeline moves it)."""

    def store(self, i: int, block: nn.Module) -> None:
        """Take back block ``i`` after it was visited (e.g. write it to disk and free it)."""


class _Captured(Exception):
    """Raised by the block-0 pre-hook to stop the forward once block 0's inputs are recorded."""


def _move(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(_move(v, device) for v in x)
    if isinstance(x, list):
        return [_move(v, device) for v in x]
    if isinstance(x, dict):
        return {k: _move(v, device) for k, v in x.items()}
    return x


def _same(a: Any, b: Any) -> bool:
    """Structural equality of captured keyword arguments (tensors compared by value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"llm.pipeline: a block returned {type(out).__name__}, expected a tensor or a tuple starting "
                    f"with one")


@dataclass
class BlockInputs:
    """The hidden states entering the current block, ``hidden`` ``[n, T, d]`` (on the device), and the
    keyword arguments of each window's call (``kwargs[j]``; windows with equal arguments share one dict)."""

    hidden: torch.Tensor
    kwargs: list[dict[str, Any]]
    batch: int = 1

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def calls(self) -> list[slice]:
        """The windows of each block call: runs of up to ``batch`` consecutive windows that share one
        keyword-argument dict (batched windows must be called with identical arguments)."""
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1:
            raise ValueError(f"llm.pipeline: BlockInputs.batch must be an int >= 1, got {self.batch!r}")
        out: list[slice] = []
        start = 0
        for j in range(1, len(self) + 1):
            if j == len(self) or j - start == self.batch or self.kwargs[j] is not self.kwargs[start]:
                out.append(slice(start, j))
                start = j
        return out

    @property
    def one_call(self) -> bool:
        """Whether every window goes through the block in one call (hooks see all windows at once)."""
        return len(self.calls()) == 1

    def run(self, block: nn.Module, *, keep: bool = False, stop_after: nn.Module | None = None,
            stop_before: nn.Module | None = None) -> torch.Tensor | None:
        """Run ``block`` on every window, ``batch`` windows per call (hooks on its layers see each
        call: ``[b, T, ...]``). Returns the outputs ``[n, T, d]`` when ``keep``, else ``None``. ``stop_after``: a submodule
        after whose call each window's run stops (statistics of the layers before it only);
        ``stop_before``: a submodule whose pre-hooks registered before this call still run (e.g. to
        record its input), then the window's run stops without computing it."""
        if keep and (stop_after is not None or stop_before is not None):
            raise ValueError("llm.pipeline: keep=True needs the whole block; do not pass stop_after/stop_before")
        if stop_after is not None and stop_before is not None:
            raise ValueError("llm.pipeline: pass stop_after or stop_before, not both")
        out = torch.empty_like(self.hidden) if keep else None
        handle = stop_after.register_forward_hook(_stop) if stop_after is not None else \
            stop_before.register_forward_pre_hook(_stop_pre) if stop_before is not None else None
        try:
            with torch.no_grad():
                for sl in self.calls():
                    try:
                        y = _first_tensor(block(self.hidden[sl], **self.kwargs[sl.start]))  # (b, T, d)
                    except _Stopped:
                        continue
                    if out is not None:
                        out[sl] = y
        finally:
            if handle is not None:
                handle.remove()
        return out


class _Stopped(Exception):
    """Raised after ``stop_after`` ran, to skip the rest of the block."""


def _stop(module, args, out):
    raise _Stopped


def _stop_pre(module, args):
    raise _Stopped


def capture_inputs(model: nn.Module, windows: torch.Tensor, *, lay: DecoderLayout | None = None,
                   device: torch.device | str | None = None) -> BlockInputs:
    """Run ``model`` up to block 0 on each window (only the embeddings and the rotary embedding are
    moved to ``device``, then back) and return block 0's inputs.

    Raises ``RuntimeError`` if the forward finishes without reaching block 0 or the captured hidden
    states do not have the shape ``[1, T, hidden]``."""
    if windows.dim() != 2 or windows.dtype != torch.long:
        raise ValueError(f"llm.pipeline: windows must be a LongTensor [n, T], got {windows.dtype} "
                         f"{tuple(windows.shape)}")
    lay = lay or layout(model)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    pre = [model.get_submodule(p) for p in lay.embed + ((lay.rotary,) if lay.rotary else ())]
    homes = [next(m.parameters(), next(m.buffers(), None)) for m in pre]
    homes = [t.device if t is not None else dev for t in homes]
    hidden: list[torch.Tensor] = []
    kwargs: list[dict[str, Any]] = []

    def hook(module, args, kw):
        x = args[0] if args else kw.get("hidden_states")
        if not isinstance(x, torch.Tensor):
            raise RuntimeError("llm.pipeline: block 0 was called without hidden states")
        kw = {k: v for k, v in kw.items() if k != "hidden_states"}
        hidden.append(x.detach())
        kw = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        kwargs.append(kwargs[0] if kwargs and _same(kwargs[0], kw) else kw)
        raise _Captured

    handle = lay.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    was = model.training
    model.eval()
    try:
        for m in pre:
            m.to(dev)
        with torch.no_grad():
            for w in windows:
                try:
                    model(input_ids=w.unsqueeze(0).to(dev), use_cache=False)  # (1, T)
                except _Captured:
                    continue
                raise RuntimeError("llm.pipeline: the forward finished without calling block 0 "
                                   f"({lay.blocks_path}.0); cannot capture its inputs")
    finally:
        handle.remove()
        for m, home in zip(pre, homes):
            m.to(home)
        model.train(was)
    seq = windows.shape[1]
    width = hidden[0].shape[-1]
    for x in hidden:
        if x.shape != (1, seq, width):
            raise RuntimeError(f"llm.pipeline: captured hidden states of shape {tuple(x.shape)}, expected "
                               f"(1, {seq}, {width})")
    return BlockInputs(hidden=torch.cat(hidden), kwargs=kwargs)  # (n, T, d)


def _reporter(total: int, progress: bool) -> Callable[[int, float], None] | None:
    """Per-block progress: a tqdm bar on a terminal, plain lines (stderr) otherwise, nothing if off."""
    if not progress:
        return None
    if sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=total, desc="blocks", leave=False)

            def tick(i: int, seconds: float) -> None:
                bar.update(1)
                if i == total - 1:
                    bar.close()
            return tick

    def line(i: int, seconds: float) -> None:
        print(f"[prunekit.llm] block {i + 1}/{total} done in {seconds:.1f} s", file=sys.stderr, flush=True)
    return line


def check_batching(block: nn.Module, inputs: BlockInputs, rtol: float = 1e-4) -> None:
    """Check that calling ``block`` on several windows at once gives each window's own output: the
    second window of the first call, run alone and inside a two-window batch, must agree within ``rtol``
    (relative to its largest output). Raises ``RuntimeError`` otherwise (e.g. a block whose keyword
    arguments carry a batch size of 1 that does not broadcast); ``batch=1`` avoids batching."""
    sl = inputs.calls()[0]
    if sl.stop - sl.start < 2:
        return
    kw = inputs.kwargs[sl.start]
    with torch.no_grad():
        two = _first_tensor(block(inputs.hidden[sl.start:sl.start + 2], **kw))  # (2, T, d)
        one = _first_tensor(block(inputs.hidden[sl.start + 1:sl.start + 2], **kw))  # (1, T, d)
    if two.shape[0] != 2 or two.shape[1:] != one.shape[1:]:
        raise RuntimeError(f"llm.pipeline: a block called on 2 windows returned {tuple(two.shape)}, on 1 window "
                           f"{tuple(one.shape)}; it cannot be batched (use batch=1)")
    err = float((two[1:] - one).abs().max() / one.abs().max().clamp_min(1e-12))
    if not err <= rtol:  # NaN fails too
        raise RuntimeError(f"llm.pipeline: a block's output on a window differs by {err:.2e} (relative) when the "
                           f"window is batched with another; it cannot be batched (use batch=1)")


def run_blocks(model: nn.Module, windows: torch.Tensor, visit: Callable[[int, nn.Module, BlockInputs], Any], *,
               device: torch.device | str | None = None, source: BlockSource | None = None,
               progress: bool = True, batch: int = 1) -> BlockInputs:
    """Visit every block of ``model`` in order on the calibration ``windows`` ([n, T] token ids),
    each on inputs produced by the already visited (pruned) blocks before it. Returns the final
    hidden states (the last block's outputs).

    ``visit`` may return the block's outputs on every window (``inputs.run(block, keep=True)`` of
    the block as it leaves the visit) to save the re-run.
    ``device``: where each block and the hidden states are computed (default CPU); blocks go back
    where they were afterwards. ``source``: a :class:`BlockSource` for blocks not resident in the
    model; each is loaded, visited and stored back, one at a time. ``batch``: windows per block call
    (``BlockInputs.batch``); above 1, block 0 is first checked to give the same outputs batched
    (:func:`check_batching`). Batching makes the GEMMs larger (faster on CPU) and lets a visitor's hooks see
    every window at once; the activations of ``batch`` windows are alive at a time.
    """
    lay = layout(model)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    inputs = capture_inputs(model, windows, lay=lay, device=dev)
    moved: dict[int, dict[str, Any]] = {}  # windows sharing one kwargs dict keep sharing it
    inputs.kwargs = [moved.setdefault(id(k), _move(k, dev)) for k in inputs.kwargs]
    inputs.hidden = inputs.hidden.to(dev)
    inputs.batch = batch
    inputs.calls()  # validates batch
    n_blocks = len(lay.blocks)
    report = _reporter(n_blocks, progress)
    for i in range(n_blocks):
        start = time.perf_counter()
        block = source.load(i) if source is not None else lay.blocks[i]
        home = next(block.parameters()).device
        block.to(dev)
        was = block.training
        block.eval()
        try:
            if i == 0 and batch > 1:
                check_batching(block, inputs)
            out = visit(i, block, inputs)
            if isinstance(out, torch.Tensor):  # the visitor already ran the final block on every window
                if out.shape != inputs.hidden.shape:
                    raise RuntimeError(f"llm.pipeline: visit({i}) returned hidden states of shape "
                                       f"{tuple(out.shape)}, expected {tuple(inputs.hidden.shape)}")
                inputs.hidden = out
            else:
                inputs.hidden = inputs.run(block, keep=True)  # next block's inputs, from the visited block
        finally:
            block.train(was)
            block.to(home)
            if source is not None:
                source.store(i, block)
        if report is not None:
            report(i, time.perf_counter() - start)
    return inputs
