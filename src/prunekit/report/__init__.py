"""Reports: an HTML page with PNG plots and the JSON summary beside it."""
from .html import layer_widths, write_report

__all__ = ["layer_widths", "write_report"]
