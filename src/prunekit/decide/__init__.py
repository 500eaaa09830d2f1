"""Deciding how much to prune where: sensitivity curves (:mod:`~prunekit.decide.sensitivity`, data in
:mod:`~prunekit.decide.curves`), budgets spent along them (:mod:`~prunekit.decide.budget`), a search
over whole candidate networks (:mod:`~prunekit.decide.search`), and how ``prune_(macs=, params=,
allocate=)`` picks among them (:mod:`~prunekit.decide.allocate`).

This room uses :mod:`prunekit.measure` (counts, latency, file size) to judge candidates; measuring
never imports deciding. ``prunekit.budgets`` is the old name of :mod:`~prunekit.decide.allocate`.
The function ``sensitivity`` is reached through its module, ``prunekit.decide.sensitivity.sensitivity``
(the module keeps its name).
"""
from .allocate import RatioSearch
from .budget import BudgetResult, budget_search
from .curves import GroupCurve, Sensitivity
from .search import SearchResult, search_ratios
from . import sensitivity  # the module: its function is sensitivity.sensitivity

__all__ = ["BudgetResult", "GroupCurve", "RatioSearch", "SearchResult", "Sensitivity", "budget_search",
           "search_ratios"]
