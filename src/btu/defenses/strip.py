"""STRIP (Gao et al. 2021, STRIP-ViTA) for text: a trigger keeps forcing its label however much of the input is
replaced, so a poisoned input's predictions stay certain (low entropy) under perturbation, a clean one's do not.

`strip` scores every training row with the victim and drops the suspicious ones (then the runner trains a fresh
model on the rest, as OpenBackdoor adapts STRIP to training); `strip-input` rejects suspicious inputs at test time.

Perturbation (STRIP-ViTA's text scheme): each copy takes one held-out clean row (the donor) at random and writes
the donor's words, highest tf-idf first, into `share` of the input's word positions (distinct positions, at least
one). A donor's high tf-idf words carry its content, so they pull a clean input's prediction around.
Held-out rows: the clean data is split once, seeded, into donors and threshold rows, so no threshold row is ever
perturbed with its own words (OpenBackdoor draws donors from the very rows it sets the threshold on).
Seeding: each text's copies come from a generator seeded by (seed, text): the same text always gets the same copies,
whichever batch it is scored in.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from ..errors import ConfigError
from ..training import predict_logits
from .base import register
from .filtering import DetectorDefense, held_out_split, keep_rows, mean_or_none, threshold_at_frr
from .options import Options, option


@dataclass
class StripOptions(Options):
    copies: int = option(5, "perturbed copies per input (the BTU paper's setting: 5)", low=1)
    share: float = option(0.5, "share of an input's words replaced in each copy (OpenBackdoor's swap_ratio)",
                          low=0, high=1, low_inclusive=False)
    frr: float = option(0.01, "false rejection rate on the held-out clean rows that sets the threshold (the "
                        "paper's 0.01)", low=0, high=1, high_inclusive=False)
    donor_share: float = option(0.5, "share of the clean rows that give the superimposed words; the others set "
                                "the threshold", low=0, high=1, low_inclusive=False, high_inclusive=False)


def ranked_words(texts) -> list[list[str]]:
    """Each text's distinct words (punctuation left out), highest tf-idf over `texts` first (smoothed idf, as
    scikit-learn's; ties by the word)."""
    docs = [[w for w in t.split() if any(c.isalnum() for c in w)] for t in texts]
    df = Counter(w for d in docs for w in set(d))
    n = len(docs)
    out = []
    for d in docs:
        tf = Counter(d)
        out.append(sorted(tf, key=lambda w: (-tf[w] * (math.log((1 + n) / (1 + df[w])) + 1), w)))
    return [r for r in out if r]


class Superimposer:
    """STRIP's perturbed copies of a text: donors' top tf-idf words written over a share of its positions."""

    def __init__(self, donor_texts, share: float, copies: int, seed: int):
        self.donors = ranked_words(donor_texts)
        if not self.donors:
            raise ConfigError("STRIP: the donor clean rows hold no words")
        self.share, self.copies, self.seed = share, copies, seed

    def __call__(self, text: str) -> list[str]:
        rng = random.Random(f"{self.seed}\0{text}")
        words = text.split()
        out = []
        for _ in range(self.copies):
            if not words:
                out.append(text)
                continue
            donor = self.donors[rng.randrange(len(self.donors))]
            copy = list(words)
            m = max(1, int(self.share * len(words)))
            for k, pos in enumerate(rng.sample(range(len(words)), m)):
                copy[pos] = donor[k % len(donor)]
            out.append(" ".join(copy))
        return out


def mean_entropies(model, tokenizer, texts, superimpose: Superimposer, max_length=128, precision="auto"):
    """Each text's prediction entropy (bits), averaged over its perturbed copies: one batched pass over all copies."""
    texts = list(texts)
    if not texts:
        return []
    copies = [c for t in texts for c in superimpose(t)]
    probs = predict_logits(model, tokenizer, copies, max_length=max_length, precision=precision).softmax(-1)
    entropy = -(probs * probs.clamp_min(1e-12).log2()).sum(-1)
    return entropy.view(len(texts), superimpose.copies).mean(1).tolist()


class StripDetector:
    """STRIP around one model: the score of a text is its certainty under perturbation, log2(labels) minus its
    mean entropy (higher: more suspicious, never negative), thresholded at `frr` on the held-out clean rows."""

    def __init__(self, ctx, model, opts: StripOptions):
        s = ctx.settings
        self.model, self.tokenizer, self.max_length, self.precision = model, ctx.tokenizer, s.max_length, s.precision
        self.max_entropy = math.log2(ctx.train.num_labels)
        clean = ctx.clean_data.texts
        donors, held = held_out_split(len(clean), opts.donor_share, s.seed)
        self.superimpose = Superimposer([clean[i] for i in donors], opts.share, opts.copies, s.seed)
        clean_scores = self.scores([clean[i] for i in held])
        self.threshold = threshold_at_frr(clean_scores, opts.frr)
        self.info = {"threshold": self.threshold, "frr": opts.frr, "donor_rows": len(donors),
                     "threshold_rows": len(held), "clean_mean_entropy": mean_or_none(self.entropy(clean_scores))}

    def scores(self, texts) -> list[float]:
        return [self.max_entropy - h for h in mean_entropies(self.model, self.tokenizer, texts, self.superimpose,
                                                             self.max_length, self.precision)]

    def entropy(self, scores) -> list[float]:
        return [self.max_entropy - x for x in scores]


class _StripBase(DetectorDefense):
    needs = frozenset({"pretrained", "victim", "clean_data"})
    Options = StripOptions
    quick_options = {"copies": 2}
    key, title, Detector = "strip", "STRIP", StripDetector

    def console(self, report: dict) -> str:
        r = report.get("strip")
        if not r:
            return ""
        line = (f"STRIP: threshold {r['threshold']:.4f} bits of certainty (FRR {r['frr']:g} on {r['threshold_rows']} "
                f"held-out clean rows, words from {r['donor_rows']} others; their mean entropy "
                f"{r['clean_mean_entropy']:.3f} bits).")
        if "dropped" in r:
            line += f" Dropped {r['dropped']} of {r['scored']} training rows (mean entropy " \
                    f"{_fmt(r['dropped_mean_entropy'])} dropped, {_fmt(r['kept_mean_entropy'])} kept)."
        return line


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


@register
class Strip(_StripBase):
    """STRIP as a training filter: drop the training rows whose predictions stay certain under perturbation."""

    name = "strip"
    summary = "STRIP: drop training rows whose victim predictions stay certain under superimposed words"
    stage = "data"
    result_name = "STRIP filter + training"

    def filter(self, ctx, state):
        det = self.detector(ctx, state, ctx.victim())
        scores = det.scores(ctx.train.texts)
        keep = [x <= det.threshold for x in scores]
        entropy = det.entropy(scores)
        det.info.update(scored=len(scores), dropped=keep.count(False),
                        dropped_mean_entropy=mean_or_none(h for h, k in zip(entropy, keep) if not k),
                        kept_mean_entropy=mean_or_none(h for h, k in zip(entropy, keep) if k))
        return keep_rows(ctx, keep, scores, {"strip": dict(det.info)})


@register
class StripInput(_StripBase):
    """STRIP at test time: reject the inputs whose predictions stay certain under perturbation."""

    name = "strip-input"
    summary = "STRIP at test time: reject inputs whose predictions stay certain under superimposed words"
    stage = "input"
