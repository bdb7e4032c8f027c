"""RAP, robustness-aware perturbations (Yang et al., EMNLP 2021): a backdoored model is robust on poisoned inputs.
Learn the embedding of one rare word (the RAP word) so that putting it in front of a clean input of the protected
label lowers that label's probability by an amount inside the probing range [probe_low, probe_high]
(RAP's [-0.3, -0.1]); a poisoned input, held by its trigger, loses much less.

Score of an input predicted as the protected label: change - probe_high, where change = p(target | word + input)
- p(target | input) (the first from the victim with the learned word, the second from the victim itself). It is
how far the change stays above the probing range: a clean input scores about -0.1..0, a poisoned one about +0.1
(higher: more suspicious). Inputs of other labels are not RAP's to judge: they score UNPROTECTED and are never
flagged. The threshold is at `frr` on held-out clean rows of the protected label.

The protected label (`target`): a defender does not know the attack's; by default the most common training label
(dirty-label poison adds rows of the target label), or name it. The clean rows of that label that the victim
predicts as it are split once, seeded, into rows that learn the word's embedding and rows that set the threshold,
so the threshold is measured on rows the perturbation was not fitted to.

Where this differs from OpenBackdoor's RAPDefender (whose FAR on SST-2 is about 1.0): it fits the word on the
protected label's clean rows only (OpenBackdoor fits on every clean row; rows of the other label can never lose
0.1 of a probability they do not have, and push the word without end); each step follows the current gradient
(RAP's code and OpenBackdoor's never zero it, so each step adds every past gradient) and is an Adam step: a
confident victim's probability is nearly flat in the row, and RAP's plain step of 1e-2 then barely moves it; the
word is not a trigger of the attacks here (the BTU paper's set-up used "tq", a BadNets trigger). As in RAP, only
the word's row changes, in a copy of the victim, and its norm is kept.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..training import predict_logits
from ..training.batching import collate, encode
from ..training.loop import autocast, resolve_device, resolve_precision
from .base import register
from .filtering import DetectorDefense, held_out_split, keep_rows, mean_or_none, threshold_at_frr
from .options import Options, option

UNPROTECTED = -2.0  # the score of an input RAP does not judge: below any protected input's (change >= -1)


@dataclass
class RapOptions(Options):
    word: str = option("mb", "the RAP word: one rare token, put in front of each input (not a trigger of the "
                       "attacks: cf, mn, bb, tq)")
    target: str | None = option(None, "the protected label (name or index); none: the most common training label")
    probe_low: float = option(-0.3, "lowest allowed change of a clean input's protected-label probability (RAP's)",
                              low=-1, high=0)
    probe_high: float = option(-0.1, "highest allowed change of that probability (RAP's)", low=-1, high=0)
    epochs: int = option(5, "epochs of learning the RAP word's embedding (RAP's 5)", low=1)
    min_steps: int = option(100, "at least this many steps: more epochs on a small clean set (RAP's 5 epochs were "
                            "over a large held-out set)", low=0)
    lr: float = option(1e-2, "Adam step size on the RAP word's embedding (RAP's 1e-2, for plain steps there)",
                       low=0, low_inclusive=False)
    frr: float = option(0.01, "false rejection rate on the held-out clean rows that sets the threshold (the "
                        "paper's 0.01)", low=0, high=1, high_inclusive=False)
    fit_share: float = option(0.5, "share of the protected label's clean rows that learn the embedding; the others "
                              "set the threshold", low=0, high=1, low_inclusive=False, high_inclusive=False)

    def __post_init__(self):
        super().__post_init__()
        if self.probe_low >= self.probe_high:
            raise ConfigError(f"option probe_low: must be below probe_high ({self.probe_high}), not {self.probe_low}")


def word_id(tokenizer, word: str) -> int:
    """The one token id of `word` as it starts a text; a ConfigError if the tokenizer splits it."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"option word: {word!r} is {len(ids)} tokens for this tokenizer; RAP needs one token")
    return ids[0]


class RapProbe:
    """The victim and its copy with the learned RAP word; measures the protected label's probability change."""

    def __init__(self, victim, tokenizer, word: str, target: int, max_length: int = 128, precision: str = "auto"):
        self.victim, self.tokenizer, self.word, self.target = victim, tokenizer, word, target
        self.max_length, self.precision = max_length, precision
        self.word_id = word_id(tokenizer, word)
        self.model = copy.deepcopy(victim)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def probs(self, model, texts) -> torch.Tensor:
        return predict_logits(model, self.tokenizer, list(texts), max_length=self.max_length,
                              precision=self.precision).softmax(-1)

    def with_word(self, texts) -> list[str]:
        return [f"{self.word} {t}" for t in texts]

    def change(self, texts) -> tuple[list[float], list[bool]]:
        """p(target | word + text) - p(target | text) per text, and whether the victim predicts the target."""
        texts = list(texts)
        if not texts:
            return [], []
        base = self.probs(self.victim, texts)
        moved = self.probs(self.model, self.with_word(texts))[:, self.target]
        return (moved - base[:, self.target]).tolist(), (base.argmax(-1) == self.target).tolist()

    def fit(self, texts, low: float, high: float, epochs: int, lr: float, batch_size: int, seed: int,
            min_steps: int = 0) -> list[float]:
        """Learn the word's embedding row (all else frozen) so the change on `texts` falls in [low, high]: RAP's
        hinge loss, Adam steps, the row's norm kept; `epochs`, or more to make `min_steps`. Returns each epoch's
        mean loss."""
        texts = list(texts)
        epochs = max(epochs, math.ceil(min_steps / math.ceil(len(texts) / batch_size)))
        base = self.probs(self.victim, texts)[:, self.target]
        ids = encode(self.tokenizer, self.with_word(texts), self.max_length)
        dev = resolve_device("auto")
        prec = resolve_precision(self.precision, dev)
        model = self.model.to(dev).eval()
        emb = model.get_input_embeddings()
        row = emb.weight[self.word_id].detach().float().clone()
        norm = row.norm()
        delta = torch.zeros_like(row, requires_grad=True)  # the row's change, added where the word's id occurs
        opt = torch.optim.Adam([delta], lr=lr)

        def add_delta(module, inputs, out):
            return out + (inputs[0] == self.word_id).unsqueeze(-1).to(out.dtype) * delta.to(out.dtype)

        hook = emb.register_forward_hook(add_delta)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        side = getattr(self.tokenizer, "padding_side", "right")
        gen = torch.Generator().manual_seed(seed)
        history = []
        try:
            for _ in range(epochs):
                order, total = torch.randperm(len(ids), generator=gen).tolist(), 0.0
                for start in range(0, len(order), batch_size):
                    batch = order[start:start + batch_size]
                    x, mask = collate([ids[i] for i in batch], pad, padding_side=side)
                    with autocast(dev, prec):
                        logits = model(input_ids=x.to(dev), attention_mask=mask.to(dev)).logits
                    diff = logits.float().softmax(-1)[:, self.target] - base[batch].to(dev)
                    loss = (diff - high).clamp_min(0).mean() + (low - diff).clamp_min(0).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    with torch.no_grad():  # keep the row's norm, as RAP does
                        new = row + delta
                        delta.copy_(new * (norm / new.norm()) - row)
                    total += loss.item() * len(batch)
                history.append(total / len(ids))
        finally:
            hook.remove()
        with torch.no_grad():
            emb.weight[self.word_id] = (row + delta).to(emb.weight.dtype)
        return history


class RapDetector:
    """RAP around one victim: the learned word, the score of a text and the threshold on held-out clean rows."""

    def __init__(self, ctx, model, opts: RapOptions):
        s, clean = ctx.settings, ctx.clean_data
        names = ctx.train.label_names
        if opts.target is not None:
            self.target = ctx.train.label_id(opts.target)
        else:  # dirty-label poison adds rows of the target label
            self.target = max(range(len(names)), key=lambda y: (ctx.train.labels.count(y), -y))
        self.probe_high = opts.probe_high
        self.probe = RapProbe(model, ctx.tokenizer, opts.word, self.target, s.max_length, s.precision)
        rows = [i for i, y in enumerate(clean.labels) if y == self.target]
        predicted = [i for i, p in zip(rows, self.probe.change(clean.texts[i] for i in rows)[1]) if p]
        fallback = len(predicted) < 2  # a weak victim: use the label's rows whatever it predicts
        rows = rows if fallback else predicted
        if len(rows) < 2:
            raise ConfigError(f"RAP needs at least 2 clean rows of the protected label {names[self.target]!r}, "
                              f"not {len(rows)}")
        fit, held = held_out_split(len(rows), opts.fit_share, s.seed)
        history = self.probe.fit([clean.texts[rows[i]] for i in fit], opts.probe_low, opts.probe_high, opts.epochs,
                                 opts.lr, s.batch_size, s.seed, opts.min_steps)
        change = self.probe.change(clean.texts[rows[i]] for i in held)[0]
        self.threshold = threshold_at_frr([c - self.probe_high for c in change], opts.frr)
        inside = sum(opts.probe_low <= c <= opts.probe_high for c in change)
        self.info = {"word": opts.word, "target": names[self.target], "threshold": self.threshold, "frr": opts.frr,
                     "probe_range": [opts.probe_low, opts.probe_high], "fit_rows": len(fit),
                     "threshold_rows": len(held), "rows_not_predicted_as_target": fallback,
                     "clean_mean_change": sum(change) / len(change), "clean_in_range": inside / len(change),
                     "fit_epochs": len(history), "fit_loss": history}

    def scores(self, texts, protected=None) -> list[float]:
        """change - probe_high for the texts the victim predicts as the target (and `protected` allows, when
        given); UNPROTECTED for the others."""
        change, predicted = self.probe.change(texts)
        protected = predicted if protected is None else [a and b for a, b in zip(predicted, protected)]
        return [c - self.probe_high if p else UNPROTECTED for c, p in zip(change, protected)]


class _RapBase(DetectorDefense):
    needs = frozenset({"pretrained", "victim", "clean_data"})
    Options = RapOptions
    quick_options = {"epochs": 1, "min_steps": 0}
    key, title, Detector = "rap", "RAP", RapDetector

    def console(self, report: dict) -> str:
        r = report.get("rap")
        if not r:
            return ""
        low, high = r["probe_range"]
        line = (f"RAP: word {r['word']!r} protecting label {r['target']!r}, learned on {r['fit_rows']} clean rows "
                f"({r['fit_epochs']} epochs, loss {r['fit_loss'][0]:.3f} -> {r['fit_loss'][-1]:.3f}); on "
                f"{r['threshold_rows']} held-out ones the probability changes by {r['clean_mean_change']:+.3f} on "
                f"average, {100 * r['clean_in_range']:.0f} % inside [{low:g}, {high:g}]; threshold "
                f"{r['threshold']:+.4f} (FRR {r['frr']:g}).")
        if "dropped" in r:
            line += f" Dropped {r['dropped']} of the {r['scored']} training rows of that label the victim predicts " \
                    f"as it (mean change {_fmt(r['dropped_mean_change'])} dropped, {_fmt(r['kept_mean_change'])} kept)."
        return line


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


@register
class Rap(_RapBase):
    """RAP as a training filter: drop the protected label's training rows whose probability the RAP word barely
    moves; rows of other labels are kept."""

    name = "rap"
    summary = "RAP: drop target-label training rows that a learned rare-word perturbation barely moves"
    stage = "data"
    result_name = "RAP filter + training"

    def filter(self, ctx, state):
        det = self.detector(ctx, state, ctx.victim())
        scores = det.scores(ctx.train.texts, [y == det.target for y in ctx.train.labels])
        keep = [x <= det.threshold for x in scores]
        scored = [(x + det.probe_high, k) for x, k in zip(scores, keep) if x != UNPROTECTED]
        det.info.update(scored=len(scored), dropped=keep.count(False),
                        dropped_mean_change=mean_or_none(c for c, k in scored if not k),
                        kept_mean_change=mean_or_none(c for c, k in scored if k))
        return keep_rows(ctx, keep, scores, {"rap": dict(det.info)})


@register
class RapInput(_RapBase):
    """RAP at test time: reject the inputs predicted as the protected label that the RAP word barely moves."""

    name = "rap-input"
    summary = "RAP at test time: reject target-label inputs that a learned rare-word perturbation barely moves"
    stage = "input"
