"""ABL, anti-backdoor learning (Li et al., "Anti-Backdoor Learning: Training Clean Models on Poisoned Data",
NeurIPS 2021), carried over to a pretrained transformer.

Poisoned rows are learned faster than clean ones. ABL exploits it in three steps:

1. Isolation (data): train a copy of the pretrained model for `isolation_steps` steps with the local gradient
   ascent loss sign(l - gamma) * l per row: a row whose loss falls below gamma is pushed back up, so only the rows
   the model learns fastest (the poisoned) sink far below it between steps. Rank the rows by loss in eval mode; the
   lowest `isolation_rate` are isolated.
2. Training (train): ordinary fine-tuning of a fresh pretrained copy on the other rows.
3. Unlearning (post): epochs over the isolated rows and `rest_per_isolated` times as many other rows, minimising
   the others' loss while maximising the isolated rows' (each capped at `cap`, so the ascent cannot run away),
   AdamW at a transformer's learning rate with clipping; after each epoch the dev accuracy is checked and the
   unlearning stops, keeping the last good weights, when it falls more than `tolerance` points below where it
   started.

The image recipe (SGD at lr 0.1, 20 isolation epochs) collapses a pretrained transformer; these defaults do not:
gamma 0.5, 300 isolation steps, 1 % isolated, 5 unlearning epochs at lr 1e-5 (the defenses reference's range).
The report gives the isolation's precision and recall against the ground-truth flags.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..training import accuracy, predict, predict_logits, train
from ..training.objectives import Objective
from .base import Defense, register
from .filtering import keep_rows
from .options import Options, option


@dataclass
class ABLOptions(Options):
    gamma: float = option(0.5, "the loss floor of the isolation's local gradient ascent", low=0,
                          low_inclusive=False)
    isolation_steps: int = option(300, "optimizer steps of the isolation training", low=1)
    isolation_rate: float = option(0.01, "the share of rows isolated (the lowest losses)", low=0, high=0.5,
                                   low_inclusive=False)
    unlearn_epochs: int = option(5, "at most this many unlearning epochs (0: none)", low=0)
    unlearn_lr: float = option(1e-5, "the unlearning's learning rate", low=0, low_inclusive=False)
    unlearn_weight: float = option(1.0, "the weight of the isolated rows' (maximised) loss", low=0)
    rest_per_isolated: int = option(3, "other rows per isolated row in the unlearning set", low=0)
    cap: float = option(3.0, "an isolated row's loss counts up to this value (no gain from pushing further)",
                        low=0, low_inclusive=False)
    tolerance: float = option(1.0, "stop unlearning once dev accuracy is this many points below its start", low=0)
    dev_rows: int = option(500, "without a dev set: this many kept training rows stand in for it", low=1)


class LocalGradientAscent(Objective):
    """sign(l - gamma) * l per row, mean over the batch: descent above gamma, ascent below."""

    resumable = True

    def __init__(self, gamma: float):
        self.gamma = gamma

    def loss(self, outputs, batch):
        ce = batch.per_row_loss(outputs)
        return (torch.sign(ce - self.gamma) * ce).mean()


class SignedLoss(Objective):
    """Mean over the batch of l for a kept row and -w * min(l, cap) for an isolated one."""

    def __init__(self, isolated: torch.Tensor, weight: float, cap: float):
        self.isolated, self.weight, self.cap = isolated, weight, cap

    def loss(self, outputs, batch):
        ce = batch.per_row_loss(outputs)
        iso = self.isolated[batch.rows].to(ce.device)
        return torch.where(iso, -self.weight * ce.clamp(max=self.cap), ce).mean()


def row_losses(model, tokenizer, input_ids, labels, precision: str) -> list[float]:
    """Each row's cross-entropy in eval mode."""
    logits = predict_logits(model, tokenizer, input_ids=input_ids, precision=precision)
    return F.cross_entropy(logits, torch.tensor(labels, dtype=torch.long), reduction="none").tolist()


@register
class ABL(Defense):
    """Anti-backdoor learning: isolate the fastest-learned rows, train on the rest, unlearn the isolated ones."""

    name = "abl"
    summary = ("ABL: isolate the rows learned fastest (local gradient ascent), train on the rest, then unlearn "
               "the isolated rows while the dev accuracy holds")
    Options = ABLOptions
    result_name = "ABL"
    quick_options = {"isolation_steps": 4, "isolation_rate": 0.1, "unlearn_epochs": 2, "unlearn_lr": 1e-3}

    def steps(self):
        steps = [("data", self.isolate), ("train", self.fit)]
        return steps + ([("post", self.repair)] if self.options.unlearn_epochs else [])

    def isolate(self, ctx, state):
        o = self.options
        model = ctx.pretrained()
        batches = math.ceil(len(ctx.input_ids) / ctx.settings.batch_size)
        train(model, ctx.tokenizer, input_ids=ctx.input_ids, labels=ctx.train.labels,
              # (steps - 0.5) / batches epochs: the loop runs ceil(epochs * batches) = exactly `isolation_steps` steps
              config=ctx.train_config("ABL: isolation (local gradient ascent)",
                                      epochs=(o.isolation_steps - 0.5) / batches,
                                      seed_offset=4), objective=LocalGradientAscent(o.gamma),
              checkpoint=ctx.checkpoint("abl-isolation"))
        losses = row_losses(model, ctx.tokenizer, ctx.input_ids, ctx.train.labels, ctx.settings.precision)
        n_iso = max(1, round(o.isolation_rate * len(losses)))
        order = sorted(range(len(losses)), key=lambda i: (losses[i], i))
        isolated = set(order[:n_iso])
        state.notes["abl"] = {"gamma": o.gamma, "isolation_steps": o.isolation_steps, "isolated": n_iso,
                              "isolated_loss_max": losses[order[n_iso - 1]],
                              "median_loss": losses[order[len(order) // 2]]}
        return keep_rows(ctx, [i not in isolated for i in range(len(losses))], [-x for x in losses])

    def fit(self, ctx, state):
        from .runner import train_on_kept

        return train_on_kept(ctx, state.filter, {"desc": "ABL: training on the other rows"})

    def repair(self, ctx, state, model):
        o = self.options
        kept = state.filter.kept
        isolated = sorted(set(range(len(ctx.train))) - set(kept))
        rng = random.Random(ctx.settings.seed)
        rest = rng.sample(kept, min(len(kept), o.rest_per_isolated * len(isolated)))
        rows = isolated + rest
        ids, labels = [ctx.input_ids[i] for i in rows], [ctx.train.labels[i] for i in rows]
        flags = torch.tensor([True] * len(isolated) + [False] * len(rest))
        if ctx.dev is not None:
            dev_texts, dev_labels, dev_name = list(ctx.dev.texts), list(ctx.dev.labels), "dev"
        else:
            sample = rng.sample(kept, min(len(kept), o.dev_rows))
            dev_texts = [ctx.train.texts[i] for i in sample]
            dev_labels, dev_name = [ctx.train.labels[i] for i in sample], "kept training rows"

        def dev_acc(m):
            return accuracy(predict(m, ctx.tokenizer, dev_texts, precision=ctx.settings.precision), dev_labels)

        start = dev_acc(model)
        history, stopped = [], "all epochs ran"
        iso_ids, iso_labels = ids[:len(isolated)], labels[:len(isolated)]
        iso_before = sum(row_losses(model, ctx.tokenizer, iso_ids, iso_labels, ctx.settings.precision)) / len(iso_ids)
        for epoch in range(o.unlearn_epochs):
            saved = copy.deepcopy(model.state_dict())
            train(model, ctx.tokenizer, input_ids=ids, labels=labels,
                  config=ctx.train_config(f"ABL: unlearning epoch {epoch + 1}", epochs=1.0, lr=o.unlearn_lr,
                                          seed_offset=20 + epoch, schedule="constant"),
                  objective=SignedLoss(flags, o.unlearn_weight, o.cap))
            acc = dev_acc(model)
            history.append(acc)
            if acc < start - o.tolerance:
                model.load_state_dict(saved)
                stopped = f"epoch {epoch + 1}: {dev_name} accuracy {acc:.2f} fell below {start:.2f} - {o.tolerance:g}"
                break
        iso_after = sum(row_losses(model, ctx.tokenizer, iso_ids, iso_labels, ctx.settings.precision)) / len(iso_ids)
        state.notes["abl"].update(unlearning={"rows": len(rows), "dev": dev_name, "start_accuracy": start,
                                              "accuracy_per_epoch": history, "stopped": stopped,
                                              "isolated_loss_before": iso_before, "isolated_loss_after": iso_after})
        return model

    def report(self, ctx, state) -> dict:
        return {"abl": state.notes["abl"]} if "abl" in state.notes else {}

    def markdown(self, report: dict) -> str:
        r = report.get("abl")
        if not r:
            return ""
        lines = ["## ABL", "", f"Isolation: {r['isolation_steps']} steps of local gradient ascent (gamma "
                 f"{r['gamma']:g}); the {r['isolated']} lowest-loss rows isolated (loss at most "
                 f"{r['isolated_loss_max']:.4f}; the median row's {r['median_loss']:.4f}). The filter line above "
                 "is the isolation against the ground truth."]
        u = r.get("unlearning")
        if u:
            per = ", ".join(f"{a:.2f}" for a in u["accuracy_per_epoch"])
            lines.append(f"Unlearning on {u['rows']} rows: {u['dev']} accuracy {u['start_accuracy']:.2f} before, "
                         f"{per} after each epoch ({u['stopped']}); the isolated rows' mean loss "
                         f"{u['isolated_loss_before']:.3f} -> {u['isolated_loss_after']:.3f}.")
        return "\n".join(lines) + "\n"

    def console(self, report: dict) -> str:
        r = report.get("abl")
        if not r:
            return ""
        u = r.get("unlearning")
        return f"ABL: {r['isolated']} rows isolated" + (f"; unlearning: {u['stopped']}." if u else ".")
