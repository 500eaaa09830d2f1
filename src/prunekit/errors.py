"""Exceptions raised by prunekit; each names what failed and where."""


class PrunekitError(Exception):
    """Base class for every error prunekit raises on purpose."""


class UnsupportedOpError(PrunekitError):
    """An op prunekit cannot prune through exactly; the message names the op and module path."""


class PlanError(PrunekitError):
    """A plan is inconsistent with the model it is applied to (or with itself)."""


class ApplyError(PrunekitError):
    """Applying a plan failed; the model was restored to exactly its previous state."""
