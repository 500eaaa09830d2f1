"""Measurements taken from real runs."""
from .counting import Counts, count

__all__ = ["Counts", "count"]
