"""Training and evaluation: one loop for every model and defense."""

from .evaluate import accuracy, attack_success_rate, evaluate, predict, predict_logits
from .loop import TrainConfig, TrainResult, set_trainable, train
from .objectives import (
    Batch,
    CrossEntropy,
    Distillation,
    Objective,
    WeightedCrossEntropy,
    balanced_class_weights,
    distillation_loss,
)
from .seeding import seed_everything

__all__ = ["TrainConfig", "TrainResult", "train", "set_trainable", "Objective", "Batch", "CrossEntropy",
           "WeightedCrossEntropy", "Distillation", "balanced_class_weights", "distillation_loss", "predict",
           "predict_logits", "evaluate", "accuracy", "attack_success_rate", "seed_everything"]
