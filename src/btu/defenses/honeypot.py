"""ST, the honeypot defense (Tang et al., "Setting the Trap: Capturing and Defeating Backdoors in Pretrained
Language Models through Honeypots", NeurIPS 2023), written from the paper (no code was released; the BTU paper
reimplemented it too).

A lower layer of a pretrained model already carries enough of a trigger to classify poisoned rows, and little of the
task. A small honeypot classifier on that layer, trained with the generalized cross-entropy (GCE, which fits the
easy rows first and ignores the hard ones), soon fits the poisoned rows and not the clean ones. The task model's
per-row cross-entropy is re-weighted by how badly the honeypot fits the row,

    w = sigmoid((CE_honeypot - c) / T)        (after `warmup` steps; 1 before)

so the rows the honeypot has learned, the poisoned ones, barely train the task model. The honeypot reads the layer
through a stop-gradient: it learns from the layer but does not shape it. At prediction only the task model runs.
The report compares the down-weighted rows (final weight below 0.5) with the ground-truth flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..training import train
from ..training.objectives import Objective
from ..training.pooling import POOLINGS, pool
from .base import Defense, register
from .options import Options, option


@dataclass
class STOptions(Options):
    layer: int = option(1, "the layer the honeypot reads (0: the embeddings; 1: after the first layer)", low=0)
    pooling: str = option("mean", "the honeypot's view of a row: the mean over its tokens, [CLS], or each "
                          "feature's max over its tokens", choices=POOLINGS)
    honeypot_lr: float = option(1e-3, "the honeypot's learning rate (a fresh head: far above the model's)", low=0,
                                low_inclusive=False)
    hidden: int = option(256, "the honeypot MLP's hidden width (0: a linear honeypot)", low=0)
    q: float = option(0.7, "GCE's q (the honeypot's loss: (1 - p_y^q) / q; q -> 0 is cross-entropy)", low=0,
                      high=1, low_inclusive=False)
    threshold: float = option(0.1, "c: a row whose honeypot cross-entropy is below c weighs under one half",
                              low=0)
    temperature: float = option(0.05, "T: how sharply the weight turns from 0 to 1 around c", low=0,
                                low_inclusive=False)
    warmup: int = option(20, "steps before the weights apply (the honeypot learns first)", low=0)
    epochs: float | None = option(None, "epochs (none: the run's)", low=0, low_inclusive=False)


def row_weights(honeypot_ce: torch.Tensor, threshold: float, temperature: float) -> torch.Tensor:
    """The task loss's weight per row: near 0 where the honeypot fits the row, near 1 where it does not."""
    return torch.sigmoid((honeypot_ce - threshold) / temperature)


def gce_loss(logits: torch.Tensor, labels: torch.Tensor, q: float) -> torch.Tensor:
    """Generalized cross-entropy (Zhang & Sabuncu 2018), mean over rows."""
    p = torch.softmax(logits.float(), -1).gather(1, labels.view(-1, 1)).squeeze(1).clamp(min=1e-8)
    return ((1.0 - p.pow(q)) / q).mean()


class HoneypotObjective(Objective):
    """Task cross-entropy re-weighted by a honeypot classifier on a lower layer (trained beside it, with GCE)."""

    output_hidden_states = True
    resumable = True

    def __init__(self, o: STOptions, num_labels: int, decoder: bool = False):
        self.o, self.num_labels, self.decoder = o, num_labels, decoder
        self.parameter_lr = o.honeypot_lr
        self.head = None

    def setup(self, model, device, n_rows):
        layers = model.config.num_hidden_layers
        if self.o.layer > layers:
            raise ConfigError(f"st: layer must be at most the model's {layers} layers, not {self.o.layer}")
        d = model.config.hidden_size
        g = torch.Generator().manual_seed(12345)  # the honeypot's own initialisation, not the model's RNG stream
        if self.o.hidden:
            self.head = torch.nn.Sequential(torch.nn.Linear(d, self.o.hidden), torch.nn.GELU(),
                                            torch.nn.Linear(self.o.hidden, self.num_labels))
        else:
            self.head = torch.nn.Linear(d, self.num_labels)
        with torch.no_grad():
            for p in self.head.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02 if p.dim() > 1 else torch.zeros(p.shape))
        self.head.to(device)
        self.weight_sum = torch.zeros(n_rows)
        self.weight_n = torch.zeros(n_rows)
        self.last_weight = torch.ones(n_rows)
        self.last_honeypot_ce = torch.full((n_rows,), float("nan"))

    def parameters(self):
        return list(self.head.parameters())

    def state_dict(self):
        return {"weight_sum": self.weight_sum, "weight_n": self.weight_n, "last_weight": self.last_weight,
                "last_honeypot_ce": self.last_honeypot_ce}

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, v.clone())

    def loss(self, outputs, batch):
        h = pool(outputs.hidden_states[self.o.layer].detach(), batch.attention_mask, self.o.pooling, self.decoder)
        with torch.autocast(h.device.type, enabled=False):
            hp_logits = self.head(h.float())
            hp_ce = F.cross_entropy(hp_logits, batch.labels, reduction="none").detach()
            honeypot = gce_loss(hp_logits, batch.labels, self.o.q)
            w = row_weights(hp_ce, self.o.threshold, self.o.temperature) if batch.step >= self.o.warmup \
                else torch.ones_like(hp_ce)
            ce = batch.per_row_loss(outputs)
            task = (w * ce).sum() / w.sum().clamp(min=1e-6)
        rows = batch.rows
        self.weight_sum[rows] += w.cpu()
        self.weight_n[rows] += 1
        self.last_weight[rows] = w.cpu()
        self.last_honeypot_ce[rows] = hp_ce.cpu()
        return task + honeypot


def weight_report(obj: HoneypotObjective, flags) -> dict:
    """The down-weighted rows (last weight < 0.5) against the ground-truth flags, and the mean weights."""
    last = obj.last_weight.tolist()
    mean = (obj.weight_sum / obj.weight_n.clamp(min=1)).tolist()
    down = [i for i, w in enumerate(last) if w < 0.5]
    out = {"down_weighted": len(down), "rows": len(last), "mean_weight": sum(mean) / len(mean)}
    if flags is not None:
        poisoned = [i for i, f in enumerate(flags) if f]
        clean = [i for i, f in enumerate(flags) if not f]
        hit = sum(1 for i in down if flags[i])
        out.update(precision=100.0 * hit / len(down) if down else None,
                   recall=100.0 * hit / len(poisoned) if poisoned else None,
                   mean_weight_poisoned=sum(mean[i] for i in poisoned) / len(poisoned) if poisoned else None,
                   mean_weight_clean=sum(mean[i] for i in clean) / len(clean) if clean else None)
    return out


@register
class ST(Defense):
    """Honeypot: a GCE-trained classifier on a lower layer soaks up the trigger; the task loss skips what it fits."""

    name = "st"
    summary = ("ST (honeypot): a classifier on a lower layer learns the trigger first; the rows it fits are "
               "down-weighted in the task model's loss")
    Options = STOptions
    stage = "train"
    result_name = "ST (honeypot)"
    quick_options = {"warmup": 2}

    def fit(self, ctx, state):
        from ..models import is_decoder

        o = self.options
        model = ctx.pretrained()
        obj = HoneypotObjective(o, len(ctx.train.label_names), is_decoder(model))
        train(model, ctx.tokenizer, input_ids=ctx.input_ids, labels=ctx.train.labels,
              config=ctx.train_config("ST: honeypot training", epochs=o.epochs), objective=obj,
              checkpoint=ctx.checkpoint("st"))
        state.notes["st"] = {"layer": o.layer, "threshold": o.threshold, "temperature": o.temperature,
                             **weight_report(obj, ctx.train.poisoned)}
        return model

    def report(self, ctx, state) -> dict:
        return {"st": state.notes["st"]} if "st" in state.notes else {}

    def markdown(self, report: dict) -> str:
        r = report.get("st")
        if not r:
            return ""
        text = (f"## ST honeypot\n\nA honeypot on layer {r['layer']}; a row weighs sigmoid((CE_honeypot - "
                f"{r['threshold']:g}) / {r['temperature']:g}) in the task loss. {r['down_weighted']} of {r['rows']} "
                f"rows ended below one half (mean weight {r['mean_weight']:.3f}).")
        if "precision" in r:
            text += (f" Against the ground truth: precision {_pct(r['precision'])}, recall {_pct(r['recall'])}; "
                     f"mean weight of poisoned rows {_num(r['mean_weight_poisoned'])}, of clean rows "
                     f"{_num(r['mean_weight_clean'])}.")
        return text + "\n"

    def console(self, report: dict) -> str:
        r = report.get("st")
        if not r:
            return ""
        text = f"ST: {r['down_weighted']} of {r['rows']} rows down-weighted"
        if "precision" in r:
            text += f" (precision {_pct(r['precision'])}, recall {_pct(r['recall'])} of the poisoned rows)"
        return text + "."


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1f} %"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
