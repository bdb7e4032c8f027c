"""What the score-based filters and guards share: a threshold at a false-rejection rate on clean rows, the
kept rows as a FilterResult, and a guard that rejects the inputs a score marks.

STRIP, RAP (and any detector that scores inputs) threshold where a chosen share of clean rows would be
rejected, as their papers do; as training filters they drop the training rows past that threshold.
"""

from __future__ import annotations

import math
import random

from ..errors import ConfigError
from .base import Defense, FilterResult, Guard


def threshold_at_frr(clean_scores, frr: float) -> float:
    """The score above which at most a share `frr` (0..1) of `clean_scores` lies: inputs scoring above it are
    rejected (higher score = more suspicious). frr=0.01 rejects about 1 % of clean rows."""
    scores = sorted(float(s) for s in clean_scores)
    if not scores:
        raise ConfigError("no clean rows to set the detector's threshold on (give --clean-data)")
    if not 0.0 <= frr < 1.0:
        raise ConfigError(f"frr must be in [0, 1), not {frr}")
    allowed = math.floor(frr * len(scores))  # clean rows that may lie above the threshold
    return scores[len(scores) - 1 - allowed]


def held_out_split(n: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of range(n) into a part of about `share` and the rest, each at least one row."""
    if n < 2:
        raise ConfigError(f"needs at least 2 clean rows to split into two held-out parts, not {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(n - 1, max(1, round(share * n)))
    return sorted(order[:k]), sorted(order[k:])


def keep_rows(ctx, keep, scores, report: dict | None = None) -> FilterResult:
    """The FilterResult of keeping the training rows where `keep` is true (their texts unchanged)."""
    kept = [i for i, k in enumerate(keep) if k]
    return FilterResult(kept, ctx.train.subset(kept), [ctx.input_ids[i] for i in kept], [float(s) for s in scores],
                        report or {})


class ScoreGuard(Guard):
    """Predicts with `model`; rejects the inputs whose score (`score(texts)`, higher = more suspicious) is above
    `threshold`."""

    def __init__(self, model, tokenizer, score, threshold: float, max_length: int = 128, precision: str = "auto"):
        self.model, self.tokenizer, self.score, self.threshold = model, tokenizer, score, threshold
        self.max_length, self.precision = max_length, precision

    def predict(self, texts):
        from ..training import predict

        preds = predict(self.model, self.tokenizer, texts, max_length=self.max_length, precision=self.precision)
        return preds, [float(s) > self.threshold for s in self.score(texts)]


def mean_or_none(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


class DetectorDefense(Defense):
    """A detector's two defenses share this: one `Detector(ctx, model, options)` per run (its threshold set on the
    clean rows), its report under `key`, and, as an input guard, a ScoreGuard rejecting what it scores above the
    threshold. Subclasses set `key`, `title`, `Detector` and `console`; the data variant adds `filter`."""

    key = title = ""
    Detector: type = None

    def detector(self, ctx, state, model):
        if self.key not in state.notes:
            state.notes[self.key] = self.Detector(ctx, model, self.options)
        return state.notes[self.key]

    def report(self, ctx, state) -> dict:
        return {self.key: dict(state.notes[self.key].info)} if self.key in state.notes else {}

    def markdown(self, report: dict) -> str:
        return f"## {self.title}\n\n" + self.console(report) + "\n" if report.get(self.key) else ""

    def guard(self, ctx, state, model):
        det = self.detector(ctx, state, model)
        return ScoreGuard(model, ctx.tokenizer, det.scores, det.threshold, ctx.settings.max_length,
                          ctx.settings.precision)
