"""BKI, Backdoor Keyword Identification (Chen & Dai, Neurocomputing 2021), as a data filter.

1. Word scores. Each whitespace word of each training row is scored by how far deleting it moves the victim's
   sentence representation: the L-infinity norm of the change of the last layer's [CLS] state (the last real
   token's, for a decoder). This is the paper's "effect on the final hidden state" carried over from its LSTM to a
   transformer (OpenBackdoor uses the same quantity); the paper's second, per-step LSTM term has no transformer
   counterpart. All leave-one-word-out variants go through the victim in length-bucketed batches, a few thousand
   at a time, not row by row.
2. Keywords. Each row keeps its `p` highest-scoring words. Over the set, a word that is among a row's top p in
   n rows, with mean score f there, gets
       g = f * log10(n) * log10(S / n),   S = (alpha * N)^2   (N: training rows),
   log10(n) rewards a word that keeps coming up, log10(S / n) holds back one that comes up everywhere; as a
   function of n the product peaks at n = alpha * N, alpha being the share of rows expected to carry the trigger.
   (OpenBackdoor ranks by f * log10(n) alone and has no alpha. S = (alpha N)^2 is a reading of the paper's S taken
   from a third-party reimplementation; the paper's text was not at hand to check it. With S = alpha N instead, a
   trigger in alpha of the rows would score 0.)
3. The suspected triggers: the words of highest g (g > 0), as many as stand above the set's largest drop in g.
   Among the top `max_keywords`, the largest ratio between consecutive scores marks the end of the triggers when
   it is at least `min_gap`; without such a drop, the top word alone (OpenBackdoor's one keyword). `keywords=K`
   takes the top K instead. The rows holding a suspected trigger go. (Why: an attack may plant several trigger
   words. On SST-2's poisoned training set, the four addword triggers are its four top words, then g halves, and
   one keyword let three of them through; the rule's 10 and 1.5 were set from that training set's scores, with no
   test set read.)

OpenBackdoor's BKIDefender scores with whatever model it is handed, and its attacker never hands it the victim, so
it scores with an untrained model; here the victim is a need, trained once per run (or given with --victim).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from .base import Defense, register
from .filtering import keep_rows
from .options import Options, option

CHUNK = 8192  # leave-one-word-out variants per forward_rows call: bounds the features held at once


@dataclass
class BKIOptions(Options):
    p: int = option(5, "words each row nominates as its keywords: the p whose deletion moves the victim most "
                       "(the paper's p)", low=1)
    alpha: float = option(0.1, "the share of rows expected to carry the trigger: the keyword score favours words "
                               "nominated in about alpha * N rows (the paper's alpha)", low=0, high=1,
                          low_inclusive=False)
    keywords: int = option(0, "how many of the highest-scoring keywords are taken for triggers (0: those above "
                              "the largest drop in score, see min_gap)", low=0)
    max_keywords: int = option(10, "keywords=0: the drop is looked for among this many top words", low=1)
    min_gap: float = option(1.5, "keywords=0: the smallest ratio between consecutive scores that ends the "
                                 "triggers (none that large: the top word alone)", low=1, low_inclusive=False)
    drop: str = option("contains", "which rows go: every row containing a trigger word (contains), or only the "
                                   "rows that nominated it among their top p (nominated, OpenBackdoor's)",
                       choices=("contains", "nominated"))


def deletion_scores(model, tokenizer, texts, max_length: int = 128, precision: str = "auto") -> list[list[float]]:
    """Per row, per whitespace word: the L-infinity change of the model's last-layer [CLS] state when the word is
    deleted. One length-bucketed pass over all variants (in chunks of about CHUNK rows)."""
    from ..training.evaluate import cls_features

    words = [t.split() for t in texts]
    out: list[list[float]] = [[] for _ in texts]
    start = 0
    while start < len(texts):
        rows, variants = [], []
        for i in range(start, len(texts)):
            if rows and len(variants) + len(words[i]) + 1 > CHUNK:
                break
            ws = words[i]
            rows.append(i)
            variants.append(" ".join(ws))
            variants += [" ".join(ws[:j] + ws[j + 1:]) for j in range(len(ws))]
        feats = cls_features(model, tokenizer, variants, max_length, precision)
        at = 0
        for i in rows:
            n = len(words[i])
            out[i] = (feats[at + 1:at + 1 + n] - feats[at]).abs().amax(-1).tolist() if n else []
            at += 1 + n
        start = rows[-1] + 1
    return out


def nominate(words: list[str], scores: list[float], p: int) -> dict[str, float]:
    """A row's top-p words with their scores (a repeated word counts once, with its highest score)."""
    best: dict[str, float] = {}
    for w, s in zip(words, scores):
        best[w] = max(s, best.get(w, -math.inf))
    return dict(sorted(best.items(), key=lambda kv: -kv[1])[:p])


def keyword_table(nominations: list[dict[str, float]], alpha: float, n_rows: int) -> list[dict]:
    """Every nominated word with its rows n, mean score f and combined score g = f log10(n) log10(S / n),
    S = (alpha N)^2; highest g first (ties: the word, for a stable order)."""
    stats = defaultdict(lambda: [0, 0.0])
    for nom in nominations:
        for w, s in nom.items():
            stats[w][0] += 1
            stats[w][1] += s
    big_s = (alpha * n_rows) ** 2
    table = [{"word": w, "rows": n, "mean_score": total / n,
              "score": total / n * math.log10(n) * math.log10(big_s / n)} for w, (n, total) in stats.items()]
    return sorted(table, key=lambda r: (-r["score"], r["word"]))


def keyword_count(table: list[dict], o: BKIOptions) -> int:
    """How many top words are taken for triggers: `keywords`, or (0) those above the largest score ratio among the
    top `max_keywords` when it reaches `min_gap`, else 1."""
    if o.keywords:
        return o.keywords
    scores = [r["score"] for r in table[:o.max_keywords] if r["score"] > 0]
    ratios = [(scores[i] / scores[i + 1], i + 1) for i in range(len(scores) - 1)]
    best = max(ratios, default=(0.0, 1))
    return best[1] if best[0] >= o.min_gap else 1


@register
class BKI(Defense):
    """Backdoor Keyword Identification: the words whose deletion moves the victim most, across the set."""

    name = "bki"
    summary = ("BKI: score each word by how much deleting it moves the victim, find the set's top keyword, drop the "
               "rows that carry it")
    needs = frozenset({"pretrained", "victim"})
    Options = BKIOptions
    stage = "data"
    result_name = "BKI filter + training"
    quick_options = {}

    def filter(self, ctx, state):
        o = self.options
        texts = list(ctx.train.texts)
        with ctx.timed("bki_scoring"):
            scores = deletion_scores(ctx.victim(), ctx.tokenizer, texts, ctx.settings.max_length,
                                     ctx.settings.precision)
        words = [t.split() for t in texts]
        noms = [nominate(w, s, o.p) for w, s in zip(words, scores)]
        table = keyword_table(noms, o.alpha, len(texts))
        count = keyword_count(table, o)
        triggers = {r["word"] for r in table[:count] if r["score"] > 0}
        g = {r["word"]: r["score"] for r in table}
        # a row's suspicion: the highest combined score among its words (0 for none above 0)
        suspicion = [max([0.0] + [g.get(w, 0.0) for w in set(ws)]) for ws in words]
        carriers = [set(ws) if o.drop == "contains" else set(nom) for ws, nom in zip(words, noms)]
        keep = [not (c & triggers) for c in carriers]
        contains = defaultdict(int)
        for ws in words:
            for w in set(ws) & triggers:
                contains[w] += 1
        state.notes["bki"] = {
            "measure": "L-infinity change of the victim's last-layer [CLS] state when the word is deleted",
            "p": o.p, "alpha": o.alpha, "drop": o.drop,
            "keyword_count": count, "keyword_rule": f"top {o.keywords}" if o.keywords else
            f"above the largest score drop (ratio >= {o.min_gap:g}) among the top {o.max_keywords}, else 1",
            "keywords": [{**r, "rows_containing": contains[r["word"]]} for r in table if r["word"] in triggers],
            "top": table[:10], "dropped": keep.count(False)}
        if not triggers:
            state.notes["bki"]["warnings"] = ["no word scored above 0 (none was nominated in two or more rows): "
                                              "nothing dropped"]
        return keep_rows(ctx, keep, suspicion, state.notes["bki"])

    def report(self, ctx, state) -> dict:
        return {"bki": state.notes["bki"]} if "bki" in state.notes else {}

    def markdown(self, report: dict) -> str:
        r = report.get("bki")
        if not r:
            return ""
        from ..report import table

        lines = ["## BKI keywords", "",
                 f"Each row nominates its {r['p']} words whose deletion moves the victim most ({r['measure']}); a "
                 f"word nominated in n rows with mean score f scores f·log10(n)·log10((αN)²/n), α = {r['alpha']:g}.",
                 "", table([{k: x[k] for k in ("word", "rows", "mean_score", "score")} for x in r["top"]],
                           markdown=True), ""]
        kw = ", ".join(f"`{k['word']}` ({k['rows_containing']} rows)" for k in r["keywords"]) or "none"
        lines.append(f"Suspected trigger words: {kw}; {r['dropped']} rows dropped ({r['drop']}).")
        lines += [f"- {w}" for w in r.get("warnings", [])]
        return "\n".join(lines) + "\n"

    def console(self, report: dict) -> str:
        r = report.get("bki")
        if not r:
            return ""
        kw = ", ".join(f"{k['word']!r} (score {k['score']:.3g}, nominated in {k['rows']} rows, in "
                       f"{k['rows_containing']})" for k in r["keywords"]) or "none"
        return f"BKI: suspected trigger words {kw}; {r['dropped']} rows dropped."
