"""Exceptions raised by prunekit; each names what failed and where."""


class PrunekitError(Exception):
    """Base class for every error prunekit raises on purpose."""


class UnsupportedOpError(PrunekitError):
    """An op prunekit cannot prune through exactly; the message names the op and module path."""


class PlanError(PrunekitError):
    """A plan is inconsistent with the model it is applied to (or with itself)."""


class CounterConflict(PlanError):
    """Two coupled label sets behind one module attribute (e.g. ``attn.dim``) would be cut by different
    amounts; ``module``/``attr`` name it, ``roots`` are the label classes it counts."""

    def __init__(self, message: str, module: str, attr: str, roots: frozenset[int]) -> None:
        super().__init__(message)
        self.module, self.attr, self.roots = module, attr, roots


class ApplyError(PrunekitError):
    """Applying a plan failed; the model was restored to exactly its previous state."""


class VerificationError(ApplyError):
    """The pruned model's outputs were not finite, or (exact plans) differed from the model with the
    removed slices zeroed; the model was restored. ``module`` names the first module that diverged."""

    def __init__(self, message: str, error: float = float("inf"), module: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.module = module


class FileFormatError(PrunekitError, ValueError):
    """A file prunekit was asked to read is malformed, corrupted (checksum mismatch) or not of the expected
    format; nothing was allocated beyond what its header could justify. ``path`` names the file."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class OptimizerStateError(PrunekitError, ValueError):
    """An optimizer's state cannot be carried across a prune (``prune_(..., optimizer=)``): a state tensor
    not shaped like its parameter, or state kept across parameters. The message names the parameter and
    the state key; nothing was changed."""
