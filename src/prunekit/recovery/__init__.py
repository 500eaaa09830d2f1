"""Recovery after pruning (fine-tuning, distillation, freeze-and-retrain)."""
from .head import extract_features, fit_linear_head, head_accuracy

__all__ = ["extract_features", "fit_linear_head", "head_accuracy"]
