"""Tracing and dimension coupling: model + example inputs -> groups of coupled slices."""
from .groups import Group, Resolver
from .tracer import DependencyGraph, Unsupported, trace

__all__ = ["DependencyGraph", "Group", "Resolver", "Unsupported", "trace"]
