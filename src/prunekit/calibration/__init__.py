"""Calibration: run a model on data and collect what criteria need (activation statistics)."""
from .activations import ActivationStats, ChannelStats, collect_activation_stats

__all__ = ["ActivationStats", "ChannelStats", "collect_activation_stats"]
