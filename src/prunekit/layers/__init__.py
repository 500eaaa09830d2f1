"""Per-module handlers that keep a module's attributes true after its tensors were sliced."""
from .handlers import HANDLERS, layer_handler, update_module

__all__ = ["HANDLERS", "layer_handler", "update_module"]
