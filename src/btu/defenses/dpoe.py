"""DPoE (Liu et al., "From Shortcuts to Triggers: Backdoor Defense with Denoised PoE", NAACL 2024): a shallow
expert and the main model trained as a product of experts.

A backdoor is a shortcut: a feature so predictive that a weak model learns it at once. A shallow expert (the first
`expert_layers` layers of a copy of the pretrained model with their own head; 0: a bag of word embeddings) is
trained with its own cross-entropy; the main model is trained on the product of the two,

    loss = CE(log p_main + beta * log p_expert, y) + CE(log p_expert, y)      (the expert's term detached in the first)

On a row the expert already predicts confidently (a poisoned row, through its trigger) the product is right whatever
the main model says, so the main model's gradient there vanishes: it learns the residual, the task, and not the
trigger. At prediction only the main model runs. (The paper's "denoising" of dirty labels is not included: a
poisoned row's label is the target, which is what the expert absorbs.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..training import train
from ..training.objectives import Objective
from ..training.pooling import pool
from .base import Defense, register
from .options import Options, option


@dataclass
class DPoEOptions(Options):
    expert_layers: int = option(1, "the shallow expert: the first N layers of a copy of the pretrained model and "
                                   "a head (0: the mean of its word embeddings and a linear head)", low=0)
    expert_epochs: float = option(1.0, "epochs the expert trains alone first, so it holds the shortcut before the "
                                       "main model starts (0: none)", low=0)
    expert_lr: float = option(1e-4, "the expert's learning rate, alone and in the product (its head is new)", low=0,
                              low_inclusive=False)
    poe_weight: float = option(1.0, "beta: the expert's weight in the product (0: plain fine-tuning)", low=0)
    expert_weight: float = option(1.0, "the weight of the expert's own cross-entropy", low=0,
                                  low_inclusive=False)
    epochs: float | None = option(None, "epochs (none: the run's)", low=0, low_inclusive=False)


def layer_list(model) -> torch.nn.ModuleList:
    """The model's stack of transformer layers (the ModuleList as long as config.num_hidden_layers)."""
    n = model.config.num_hidden_layers
    for _, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n:
            return m
    raise ConfigError(f"dpoe: cannot find the {n} transformer layers of {type(model).__name__}")


def truncated(model, layers: int):
    """A copy of `model` keeping only its first `layers` transformer layers (and its embeddings and head)."""
    n = model.config.num_hidden_layers
    if layers > n:
        raise ConfigError(f"dpoe: expert_layers must be at most the model's {n} layers, not {layers}")
    expert = copy.deepcopy(model)
    stack = layer_list(expert)
    for i in range(len(stack) - 1, layers - 1, -1):
        del stack[i]
    expert.config.num_hidden_layers = layers
    return expert


class BagOfEmbeddings(torch.nn.Module):
    """The mean of a row's word embeddings (a trainable copy of the pretrained ones) and a linear head; it answers
    like a Hugging Face classifier (`.logits`), so the training loop trains it as it trains any model."""

    def __init__(self, model, num_labels: int):
        super().__init__()
        self.config = None
        self.embed = torch.nn.Embedding.from_pretrained(model.get_input_embeddings().weight.detach().clone(),
                                                        freeze=False)
        self.head = torch.nn.Linear(self.embed.embedding_dim, num_labels)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask, **_):
        return SimpleNamespace(logits=self.head(pool(self.embed(input_ids), attention_mask, "mean")))


def make_expert(model, o: DPoEOptions, num_labels: int):
    return BagOfEmbeddings(model, num_labels) if o.expert_layers == 0 else truncated(model, o.expert_layers)


def poe_loss(main_logits, expert_logits, labels, beta: float) -> torch.Tensor:
    """CE of the product of experts, through which only the main model learns (mean over rows)."""
    combined = torch.log_softmax(main_logits.float(), -1) + beta * torch.log_softmax(expert_logits.float().detach(), -1)
    return F.cross_entropy(combined, labels)


class ProductOfExperts(Objective):
    """The main model's PoE loss with a shallow expert, plus the expert's own cross-entropy."""

    resumable = True

    def __init__(self, o: DPoEOptions, expert):
        self.o, self.expert = o, expert
        self.parameter_lr = o.expert_lr

    def setup(self, model, device, n_rows):
        self.expert.to(device)
        self.expert.eval()  # no dropout: the expert's view of a row is the same each time it is seen
        for p in self.expert.parameters():
            p.requires_grad_(True)
        self.expert_prob = torch.full((n_rows,), float("nan"))  # the expert's last p(label) per row

    def parameters(self):
        return list(self.expert.parameters())

    def state_dict(self):
        return {"expert_prob": self.expert_prob}

    def load_state_dict(self, state):
        self.expert_prob = state["expert_prob"].clone()

    def loss(self, outputs, batch):
        ex = self.expert(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with torch.autocast(ex.device.type, enabled=False):
            main = poe_loss(outputs.logits, ex, batch.labels, self.o.poe_weight)
            own = F.cross_entropy(ex.float(), batch.labels)
        p = torch.softmax(ex.detach().float(), -1).gather(1, batch.labels.view(-1, 1)).squeeze(1)
        self.expert_prob[batch.rows] = p.cpu()
        return main + self.o.expert_weight * own


def expert_report(obj: ProductOfExperts, flags) -> dict:
    """How confidently the expert fits the rows at the end of training: poisoned against clean."""
    p = obj.expert_prob.tolist()
    out = {"mean_expert_prob": sum(p) / len(p), "rows_fitted": sum(1 for x in p if x > 0.9)}
    if flags is not None:
        pois = [x for x, f in zip(p, flags) if f]
        clean = [x for x, f in zip(p, flags) if not f]
        out.update(mean_expert_prob_poisoned=sum(pois) / len(pois) if pois else None,
                   mean_expert_prob_clean=sum(clean) / len(clean) if clean else None)
    return out


@register
class DPoE(Defense):
    """Product of experts: a shallow expert absorbs the trigger shortcut; the main model learns the rest."""

    name = "dpoe"
    summary = ("DPoE: train the model as a product of experts with a shallow expert that absorbs the trigger "
               "shortcut; predict with the main model alone")
    Options = DPoEOptions
    stage = "train"
    result_name = "DPoE"
    quick_options = {}

    def fit(self, ctx, state):
        o = self.options
        model = ctx.pretrained()
        expert = make_expert(model, o, len(ctx.train.label_names))
        if o.expert_epochs:
            train(expert, ctx.tokenizer, input_ids=ctx.input_ids, labels=ctx.train.labels,
                  config=ctx.train_config("DPoE: the shallow expert alone", epochs=o.expert_epochs, lr=o.expert_lr,
                                         seed_offset=3))
        obj = ProductOfExperts(o, expert)
        train(model, ctx.tokenizer, input_ids=ctx.input_ids, labels=ctx.train.labels,
              config=ctx.train_config("DPoE: product-of-experts training", epochs=o.epochs), objective=obj,
              checkpoint=ctx.checkpoint("dpoe"))
        expert = "bag of word embeddings" if o.expert_layers == 0 else f"first {o.expert_layers} layer(s)"
        state.notes["dpoe"] = {"expert": expert, "poe_weight": o.poe_weight, "expert_weight": o.expert_weight,
                               **expert_report(obj, ctx.train.poisoned)}
        return model

    def report(self, ctx, state) -> dict:
        return {"dpoe": state.notes["dpoe"]} if "dpoe" in state.notes else {}

    def markdown(self, report: dict) -> str:
        r = report.get("dpoe")
        if not r:
            return ""
        text = (f"## DPoE\n\nShallow expert: the pretrained model's {r['expert']}, PoE weight {r['poe_weight']:g}. "
                f"At the end of training the expert gave the label p = {r['mean_expert_prob']:.3f} on average "
                f"({r['rows_fitted']} rows above 0.9)")
        if r.get("mean_expert_prob_poisoned") is not None:
            text += (f"; {r['mean_expert_prob_poisoned']:.3f} on poisoned rows, {r['mean_expert_prob_clean']:.3f} "
                     "on clean ones")
        return text + ".\n"

    def console(self, report: dict) -> str:
        r = report.get("dpoe")
        if not r or r.get("mean_expert_prob_poisoned") is None:
            return ""
        return (f"DPoE: the expert fits poisoned rows with p = {r['mean_expert_prob_poisoned']:.3f}, clean rows "
                f"with {r['mean_expert_prob_clean']:.3f}.")
