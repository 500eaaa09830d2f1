"""Importance criteria: each answers "score these units" (higher = keep)."""
from .base import CRITERIA, Criterion, get_criterion, register_criterion
from .magnitude import MagnitudeCriterion, RandomCriterion

__all__ = ["CRITERIA", "Criterion", "get_criterion", "register_criterion", "MagnitudeCriterion",
           "RandomCriterion"]
