"""Re-estimate batch-norm statistics after pruning ("adaptive BN"): the cheapest recovery there is.

Removing channels shifts the distribution every later batch norm sees, while its running mean and
variance still describe the unpruned network. A few hundred images through the pruned network in
train mode, with the running statistics reset and averaged cumulatively, fix that in seconds and
with no gradient step; it is also what makes the accuracy of a freshly pruned candidate predict
its accuracy after fine-tuning (EagleEye, Li et al. 2020), which the ratio search relies on.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from .. import compat


def _inputs_of(batch: Any) -> tuple:
    """A loader's batch -> the model's positional inputs: ``x`` or the first item of ``(x, y)``."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch:
        return (batch[0],)
    raise TypeError(f"expected batches of tensors or (inputs, targets), got {type(batch).__name__}")


def recalibrate_bn(model: nn.Module, data: Iterable, *, max_batches: int | None = None) -> int:
    """Reset every batch norm's running statistics and re-estimate them on ``data`` (batches of
    ``x`` or ``(x, y)``): train-mode forwards without gradients, cumulative average. Everything
    else is left as it was — weights, the other modules' modes, the model's own mode. Returns the
    number of batch norms re-estimated (0: the model has none that track statistics; ``data`` is
    then not read).
    """
    norms = [m for m in model.modules()
             if isinstance(m, compat.BATCH_NORM) and m.track_running_stats]
    if not norms:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]
    seen = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        with torch.no_grad():
            for i, batch in enumerate(data):
                if max_batches is not None and i >= max_batches:
                    break
                model(*_inputs_of(batch))
                seen += 1
        if seen == 0:
            raise ValueError("recalibrate_bn got no batches")
    except BaseException:
        for m, (_, mean, var, n) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
        raise
    finally:
        for m, (momentum, *_rest) in zip(norms, saved):
            m.momentum = momentum
        for m, mode in modes:
            m.training = mode
    return len(norms)


__all__ = ["recalibrate_bn"]
