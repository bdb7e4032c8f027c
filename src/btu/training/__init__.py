"""Training and evaluation: one loop for every model and defense."""

from .evaluate import accuracy, attack_success_rate, evaluate, predict, predict_logits
from .loop import TrainConfig, TrainResult, balanced_class_weights, set_trainable, train
from .seeding import seed_everything

__all__ = ["TrainConfig", "TrainResult", "train", "set_trainable", "balanced_class_weights", "predict",
           "predict_logits", "evaluate", "accuracy", "attack_success_rate", "seed_everything"]
