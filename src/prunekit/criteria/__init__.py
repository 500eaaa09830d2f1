"""Importance criteria: each answers "score these units" (higher = keep)."""
from .base import CRITERIA, CachedScores, Criterion, get_criterion, normalize_scores, register_criterion
from .data import (ActivationCriterion, ActivationMaxCriterion, ActivationMeanCriterion, ActivationMinCriterion,
                   ActivationVarCriterion, APoZCriterion, BNScaleCriterion, TaylorCriterion)
from .magnitude import L1Criterion, MagnitudeCriterion, RandomCriterion

__all__ = ["CRITERIA", "CachedScores", "APoZCriterion", "ActivationCriterion", "ActivationMaxCriterion", "ActivationMeanCriterion",
           "ActivationMinCriterion", "ActivationVarCriterion", "BNScaleCriterion", "Criterion", "L1Criterion",
           "MagnitudeCriterion", "RandomCriterion", "TaylorCriterion", "get_criterion", "normalize_scores",
           "register_criterion"]
