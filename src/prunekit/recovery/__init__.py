"""Recovery after pruning: fine-tuning, knowledge distillation, freeze-and-retrain (also under torchrun)."""
from .batchnorm import recalibrate_bn
from .distill import ChannelAdapter, Distillation, kd_loss
from .freeze import freeze, frozen_modules, train_mode, unfreeze
from .head import extract_features, fit_linear_head, head_accuracy
from .train import TrainConfig, TrainResult, train

__all__ = ["ChannelAdapter", "Distillation", "TrainConfig", "TrainResult", "extract_features", "fit_linear_head",
           "freeze", "frozen_modules", "head_accuracy", "kd_loss", "recalibrate_bn", "train", "train_mode", "unfreeze"]
