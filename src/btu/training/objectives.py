"""What the training loop minimises: pluggable objectives.

`train()` owns batching, the optimizer, clipping and seeding; an `Objective` owns the loss, so a
defense with its own loss (per-row gradient ascent, hidden-state or attention terms, an extra expert,
learnable masks) plugs in without a second training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass
class Batch:
    """One optimizer step's rows, as the objective sees them.

    rows: the batch's row indices into the training set (CPU LongTensor), to index per-row data
    (teacher logits, per-row flags). input_ids, attention_mask, labels: on the device. step: 0-based.
    """

    rows: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    step: int
    _per_row: tuple | None = field(default=None, repr=False)

    def per_row_loss(self, outputs) -> torch.Tensor:
        """Cross-entropy of each row (float32, [batch]); cached, so several terms can share it."""
        if self._per_row is None or self._per_row[0] is not outputs:
            logits = outputs.logits.float()
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), self.labels.view(-1), reduction="none")
            self._per_row = (outputs, loss)
        return self._per_row[1]


class Objective:
    """The loss of one training run, plus the hooks a defense needs around it.

    The loop calls, in order: setup(model, device, n_rows) once (after the model is on the device and
    before the optimizer is built, so parameters() may create tensors there); then per step
    before_step(step, model, batch), the forward pass, loss(outputs, batch) (inside the forward's
    autocast context; it must return a scalar), backward, clipping, optimizer.step, and
    after_step(step, model, loss). `step` is 0-based everywhere here.

    parameters(): extra tensors to train beside the model's (an extra expert, masks); the loop gives them
    their own optimizer group at `parameter_lr` (None: cfg.lr) and clips them with the model's gradients. A
    caller-supplied optimizer must already hold them. output_hidden_states / output_attentions: ask the forward
    for them.
    """

    output_hidden_states = False
    output_attentions = False
    parameter_lr: float | None = None  # the learning rate of parameters() (None: the run's)
    # a checkpointed run can resume this objective mid-training: it holds no state beyond its parameters()
    # (which the checkpoint keeps) and what state_dict() returns
    resumable = False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def setup(self, model, device, n_rows: int) -> None:
        pass

    def parameters(self) -> list:
        return []

    def loss(self, outputs, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def before_step(self, step: int, model, batch: Batch) -> None:
        pass

    def after_step(self, step: int, model, loss: float) -> None:
        pass


class CrossEntropy(Objective):
    """Mean cross-entropy: exactly what Hugging Face's sequence classifiers compute when given labels=
    (single-label CE on logits.view(-1, num_labels); under autocast torch runs it in float32)."""

    resumable = True

    def setup(self, model, device, n_rows):
        # HF's forward recorded this when it received labels=; kept so saved configs do not change
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "problem_type", "") is None:
            config.problem_type = "single_label_classification"

    def loss(self, outputs, batch):
        logits = outputs.logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), batch.labels.view(-1))


class WeightedCrossEntropy(Objective):
    """Cross-entropy with per-class weights (the weighted mean torch takes: normalised by the weights' sum);
    see `balanced_class_weights`."""

    resumable = True

    def __init__(self, weights):
        self.weights = [float(w) for w in weights]
        if not self.weights or any(w < 0 or w != w for w in self.weights):
            raise ConfigError(f"class weights must hold one non-negative weight per label, not {list(weights)}")
        self._w = None

    def setup(self, model, device, n_rows):
        n = getattr(getattr(model, "config", None), "num_labels", len(self.weights))
        if len(self.weights) != n:
            raise ConfigError(f"class weights must hold one non-negative weight per label ({n}), not {self.weights}")
        self._w = torch.tensor(self.weights, dtype=torch.float32, device=device)

    def loss(self, outputs, batch):
        with torch.autocast(outputs.logits.device.type, enabled=False):  # float32, as before objectives
            return F.cross_entropy(outputs.logits.float(), batch.labels, weight=self._w)


class Distillation(Objective):
    """(1 - w) * base + w * T^2 * KL(teacher || student) at temperature T, from teacher logits computed once
    per training row (so no teacher runs per step). base: CrossEntropy() unless given."""

    def __init__(self, teacher_logits, weight: float = 0.5, temperature: float = 2.0, base: Objective | None = None):
        if not 0.0 <= weight <= 1.0 or not temperature > 0:
            raise ConfigError(f"distillation weight must be in [0, 1] and temperature > 0, not {weight} and "
                              f"{temperature}")
        self.teacher = torch.as_tensor(teacher_logits, dtype=torch.float32).cpu()
        self.weight, self.temperature = weight, temperature
        self.base = base if base is not None else CrossEntropy()
        self.output_hidden_states = self.base.output_hidden_states
        self.output_attentions = self.base.output_attentions
        self._device = None

    def setup(self, model, device, n_rows):
        if self.teacher.shape[0] != n_rows:
            raise ConfigError(f"teacher_logits has {self.teacher.shape[0]} rows for {n_rows} training rows")
        self._device = device
        self.base.setup(model, device, n_rows)

    def parameters(self):
        return self.base.parameters()

    def loss(self, outputs, batch):
        base = self.base.loss(outputs, batch)
        teacher = self.teacher[batch.rows].to(self._device)
        with torch.autocast(outputs.logits.device.type, enabled=False):  # float32, as before objectives
            return distillation_loss(outputs.logits.float(), base.float(), teacher, self.weight, self.temperature)

    def before_step(self, step, model, batch):
        self.base.before_step(step, model, batch)

    def after_step(self, step, model, loss):
        self.base.after_step(step, model, loss)


def balanced_class_weights(labels, num_labels: int) -> list[float]:
    """n / (k * n_c) per class c (k: the classes present): every class weighs the same in the loss.

    Dirty-label poison relabels non-target rows as the target; a repair set that drops the poison is short of
    exactly those rows, so a model trained on it leans to the target (its error on clean non-target rows, the
    rows ASR is measured on, goes up). Balancing undoes that lean.
    """
    counts = [0] * num_labels
    for y in labels:
        counts[y] += 1
    present = sum(1 for c in counts if c)
    return [len(labels) / (present * c) if c else 0.0 for c in counts]


def distillation_loss(student_logits, ce_loss, teacher_logits, weight: float, temperature: float):
    """(1 - w) * CE + w * T^2 * KL(softmax(teacher / T) || softmax(student / T)) (Hinton et al.)."""
    t = temperature
    kl = F.kl_div(torch.log_softmax(student_logits / t, -1), torch.log_softmax(teacher_logits / t, -1),
                  reduction="batchmean", log_target=True)
    return (1.0 - weight) * ce_loss + weight * t * t * kl
