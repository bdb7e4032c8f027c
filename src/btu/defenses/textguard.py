"""TG, TextGuard (Pei et al., "TextGuard: Provable Defense against Backdoor Attacks on Text Classification",
NDSS 2024): split every text's words into m groups by a hash of the word, train one sub-model per group on that
group's words alone, predict by majority vote.

A trigger word lands in one group (its hash decides which) in every row, training and test alike; T trigger words
can corrupt at most T of the m sub-models, and so move at most T votes. A prediction is **certified** against T
trigger words when its vote survives any T votes moving to another label:

    N_y - T > N_y' + T   for every other label y'   (or equal, when the tie goes to y: ties go to the lower label)

The report gives the certified share of the clean and poisoned test rows for T = 1 .. (m - 1) // 2, as the paper
defines it. Words are whitespace tokens, lowercased for hashing (md5, stable across processes); a row whose group
holds none of its words shows that sub-model an empty text, which it also votes on. The m sub-models are trained,
each from the pretrained weights with its own seed; the defended model is their vote (an input-stage guard over
them), and OUT/model holds group 0's sub-model, OUT/groups/ all m.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..training import predict, train
from ..training.batching import encode
from .base import Defense, Guard, register
from .options import Options, option


@dataclass
class TGOptions(Options):
    groups: int = option(3, "m: the number of word groups and sub-models (odd)", low=1)
    epochs: float | None = option(None, "epochs of each sub-model's training (none: the run's)", low=0,
                                  low_inclusive=False)
    lr: float | None = option(1e-4, "each sub-model's learning rate (none: the run's; a third of a sentence is a "
                                    "weak signal, and at 2e-5 the sub-models stayed on the majority label)", low=0,
                              low_inclusive=False)

    def __post_init__(self):
        super().__post_init__()
        if self.groups % 2 == 0:
            raise ConfigError(f"tg: groups must be odd (a majority vote without ties between two halves), not "
                              f"{self.groups}")


def group_of(word: str, m: int) -> int:
    """The group of a word: md5 of its lowercased form, modulo m (the same in every process and row)."""
    return int(hashlib.md5(word.lower().encode("utf-8")).hexdigest(), 16) % m


def split_groups(text: str, m: int) -> list[str]:
    """The text's words in m groups, each in the text's order; every word in exactly one group."""
    out = [[] for _ in range(m)]
    for w in text.split():
        out[group_of(w, m)].append(w)
    return [" ".join(g) for g in out]


def group_texts(texts, m: int) -> list[list[str]]:
    """texts -> m lists: the j-th holds each text's group-j words."""
    split = [split_groups(t, m) for t in texts]
    return [[s[j] for s in split] for j in range(m)]


def vote(votes: torch.Tensor) -> list[int]:
    """The majority label per row of a rows x labels count matrix (ties: the lowest label)."""
    return votes.argmax(-1).tolist()  # argmax returns the first maximum


def certified(votes: torch.Tensor, t: int) -> list[bool]:
    """Rows whose majority no t moved votes could change (TextGuard's certificate against t trigger words)."""
    out = []
    for row in votes.tolist():
        y = max(range(len(row)), key=lambda k: (row[k], -k))
        ok = all(row[y] - t > row[k] + t or (row[y] - t == row[k] + t and y < k)
                 for k in range(len(row)) if k != y)
        out.append(ok)
    return out


class TextGuardVote(Guard):
    """The majority vote of m sub-models, each shown its group's words; it rejects nothing."""

    rejects = False

    def __init__(self, models, tokenizer, max_length: int = 128, precision: str = "auto"):
        self.models, self.tokenizer = models, tokenizer
        self.max_length, self.precision = max_length, precision
        self.num_labels = models[0].config.num_labels

    def votes(self, texts) -> torch.Tensor:
        texts = list(texts)
        counts = torch.zeros(len(texts), self.num_labels, dtype=torch.long)
        for model, part in zip(self.models, group_texts(texts, len(self.models))):
            preds = predict(model, self.tokenizer, part, max_length=self.max_length, precision=self.precision)
            counts[torch.arange(len(texts)), torch.tensor(preds, dtype=torch.long)] += 1
        return counts

    def predict(self, texts):
        texts = list(texts)
        return vote(self.votes(texts)), [False] * len(texts)


def certified_shares(guard: TextGuardVote, texts, labels=None) -> dict:
    """{T: percent certified} for T = 1 .. (m - 1) // 2, and with labels, {T: percent certified and correct}."""
    votes = guard.votes(texts)
    preds = vote(votes)
    n = len(preds)
    out = {"certified": {}, "certified_correct": {}}
    for t in range(1, (len(guard.models) - 1) // 2 + 1):
        c = certified(votes, t)
        out["certified"][t] = 100.0 * sum(c) / n
        if labels is not None:
            out["certified_correct"][t] = 100.0 * sum(ok and p == y for ok, p, y in zip(c, preds, labels)) / n
    if labels is None:
        del out["certified_correct"]
    return out


@register
class TG(Defense):
    """TextGuard: m sub-models on hash-partitioned words, majority vote, certified against trigger words."""

    name = "tg"
    summary = ("TG (TextGuard): split each text's words into m groups by hash, train a sub-model per group, "
               "predict by majority vote (certified)")
    Options = TGOptions
    result_name = "TG (vote)"
    quick_options = {}

    def steps(self):
        return [("train", self.fit), ("input", self.guard)]

    def fit(self, ctx, state):
        o = self.options
        m = o.groups
        models = []
        for j, texts in enumerate(group_texts(ctx.train.texts, m)):
            model = ctx.pretrained()
            train(model, ctx.tokenizer, input_ids=encode(ctx.tokenizer, texts, ctx.settings.max_length),
                  labels=ctx.train.labels,
                  config=ctx.train_config(f"TG: sub-model {j + 1}/{m}", epochs=o.epochs, lr=o.lr,
                                          seed_offset=10 + j),
                  checkpoint=ctx.checkpoint(f"tg-{j}"))
            models.append(model)
        state.notes["tg_models"] = models
        words = [len(t.split()) for t in ctx.train.texts]
        state.notes["tg"] = {"groups": m, "mean_words_per_group": sum(words) / max(1, len(words)) / m}
        return models[0]

    def guard(self, ctx, state, model):
        return TextGuardVote(state.notes["tg_models"], ctx.tokenizer, ctx.settings.max_length,
                             ctx.settings.precision)

    def report(self, ctx, state) -> dict:
        if "tg" not in state.notes:
            return {}
        r = dict(state.notes["tg"])
        if state.guard is not None:
            if ctx.test is not None:
                r["clean_test"] = certified_shares(state.guard, ctx.test.texts, ctx.test.labels)
            if ctx.poison_test is not None:
                r["poisoned_test"] = certified_shares(state.guard, ctx.poison_test.texts)
        return {"tg": r}

    def markdown(self, report: dict) -> str:
        r = report.get("tg")
        if not r:
            return ""
        lines = ["## TextGuard", "", f"{r['groups']} word groups and sub-models (about "
                 f"{r['mean_words_per_group']:.1f} words of a training row per group); prediction: their vote."]
        for part, name in (("clean_test", "clean test rows"), ("poisoned_test", "poisoned test rows")):
            for t, share in r.get(part, {}).get("certified", {}).items():
                correct = r[part].get("certified_correct", {}).get(t)
                lines.append(f"- {name}: {share:.1f} % certified against {t} trigger word(s)" +
                             (f" ({correct:.1f} % certified and correct)" if correct is not None else ""))
        return "\n".join(lines) + "\n"

    def console(self, report: dict) -> str:
        r = report.get("tg")
        if not r or "clean_test" not in r or not r["clean_test"]["certified"]:
            return ""
        t, share = max(r["clean_test"]["certified"].items())
        return f"TG: {r['groups']} sub-models; {share:.1f} % of clean test rows certified against {t} trigger word(s)."

    def save(self, result, out) -> list[str]:
        from ..models import save_model

        models = result.state.notes.get("tg_models", []) if result.state is not None else []
        for j, model in enumerate(models):
            save_model(model, result.tokenizer, out / "groups" / f"group-{j}")
        return ["groups"] if models else []
