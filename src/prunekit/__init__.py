"""prunekit: make trained PyTorch models smaller and faster by pruning them.

>>> import torch, torchvision, prunekit
>>> model = torchvision.models.resnet18()
>>> result = prunekit.prune_(model, torch.randn(1, 3, 64, 64), ratio=0.5)
>>> print(result.summary())          # doctest: +SKIP
"""
from .api import PruneResult, prune_, select_units
from .config import PruneConfig
from .criteria import Criterion, get_criterion, register_criterion
from .errors import ApplyError, PlanError, PrunekitError, UnsupportedOpError, VerificationError
from .graph.groups import Group
from .graph.tracer import DependencyGraph, trace
from .measure import Counts, count
from .plan import Plan, apply_plan, make_plan
from .verify import soft_hard_error

__all__ = [
    "ApplyError", "Counts", "from_pretrained", "Criterion", "DependencyGraph", "Group", "Plan", "PlanError", "PruneConfig",
    "PruneResult", "PrunekitError", "UnsupportedOpError", "apply_plan", "count", "get_criterion",
    "make_plan", "prune_", "register_criterion", "select_units", "soft_hard_error", "trace", "VerificationError",
]
__version__ = "0.1.0"


def from_pretrained(folder, **kwargs):
    """Load a pruned Hugging Face causal LM saved by :func:`prunekit.llm.save_pretrained` (plain, or
    per-layer sizes replayed from its plan); see :func:`prunekit.llm.hf.from_pretrained`."""
    from .llm.hf import from_pretrained as load

    return load(folder, **kwargs)

# Every documented submodule is reachable after ``import prunekit`` (``prunekit.sparsity.sparsify_``),
# imported on first use so that ``import prunekit`` stays fast.
SUBMODULES = ("api", "calibration", "config", "criteria", "decide", "deploy", "errors", "graph",
              "io", "layers", "llm", "measure", "plan", "progress", "recipes", "recovery", "report", "schedules",
              "selection", "sparsity", "structure", "validate", "verify", "zoo")
# Old top-level names of modules that moved into a room, kept for attribute access
# (``prunekit.blocks.prune_blocks_``); ``from prunekit.blocks import ...`` needs the new path.
ALIASES = {"blocks": "structure.blocks", "budgets": "decide.allocate", "dead": "structure.dead",
           "progressive": "structure.progressive", "streams": "structure.streams"}


def __getattr__(name: str):
    if name in SUBMODULES or name in ALIASES:
        import importlib

        return importlib.import_module(f"{__name__}.{ALIASES.get(name, name)}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES) | set(ALIASES))
