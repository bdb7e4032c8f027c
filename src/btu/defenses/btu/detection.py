"""Stage 1 of BTU: expose backdoor tokens by how fast their embedding rows move.

Round 1 trains only the word-embedding matrix of the full classifier; round 2 trains M*
(embedding block + head, see shallow.py); round 3 trains a fresh M* on the data with
round 2's tokens removed from input_ids. Each round flags the top alpha percent of the
vocabulary by Euclidean distance between pretrained and trained rows, special tokens
excluded by the tokenizer's own list.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from ...training import TrainConfig, train
from .config import BTUConfig
from .shallow import ShallowClassifier


def flag_count(alpha: float, vocab_size: int) -> int:
    """alpha percent of the vocabulary: 0.05 -> 15 of BERT's 30,522 (at least 1)."""
    return max(1, int(alpha / 100 * vocab_size))


def row_distances(trained: torch.Tensor, pretrained: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every embedding row from its pretrained value."""
    return (trained.detach().float() - pretrained.float()).norm(dim=1)


def top_tokens(distances: torch.Tensor, k: int, exclude_ids=()) -> list[tuple[int, float]]:
    d = distances.clone()
    excl = [i for i in exclude_ids if 0 <= i < len(d)]
    if excl:
        d[excl] = float("-inf")
    k = min(k, int(torch.isfinite(d).sum()))
    vals, idx = torch.topk(d, k)
    return [(int(i), float(v)) for i, v in zip(idx, vals)]


def row_counts(input_ids, vocab_size: int) -> torch.Tensor:
    """How many rows contain each token."""
    flat = [t for row in input_ids for t in set(row) if 0 <= t < vocab_size]
    return torch.bincount(torch.tensor(flat, dtype=torch.long), minlength=vocab_size)


def relative_scores(distances: torch.Tensor, counts: torch.Tensor, min_count: int = 5) -> torch.Tensor:
    """Distance over the median distance of the tokens of similar frequency (log2 bins).

    A token in most rows moves because every batch pushes it; a trigger moves because each of
    its rows pushes it the same way. Dividing by what a token's frequency predicts keeps the
    second and discounts the first. Tokens in fewer than min_count rows score 0.
    """
    scores = torch.zeros_like(distances)
    ok = counts >= max(1, min_count)
    bins = torch.floor(torch.log2(counts.clamp(min=1).float())).long()
    for b in bins[ok].unique():
        members = ok & (bins == b)
        median = distances[members].median()
        if median > 0:
            scores[members] = distances[members] / median
    return scores


def ranking_scores(distances, counts, method: str, min_count: int) -> torch.Tensor:
    return distances if method == "distance" else relative_scores(distances, counts, min_count)


@dataclass
class RoundResult:
    round: int
    flagged: list  # [(token id, score)] best first; the score is the distance unless cfg.score says otherwise
    distances: torch.Tensor  # final distance of every vocabulary row
    history: torch.Tensor  # [records, vocab] distances over training
    history_steps: list
    seconds: float
    final_loss: float
    trained_embeddings: torch.Tensor | None = None  # round 1's matrix, for change_from=round1
    counts: torch.Tensor | None = None  # rows containing each token in this round's data


@dataclass
class DetectionResult:
    rounds: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def token_ids(self) -> list[int]:
        """T = T' u T'' u T''', in order of first appearance."""
        seen = []
        for r in self.rounds:
            for t, _ in r.flagged:
                if t not in seen:
                    seen.append(t)
        return seen

    def round(self, n: int) -> RoundResult | None:
        return next((r for r in self.rounds if r.round == n), None)


class DistanceRecorder:
    """on_step callback: every `every` steps, the distance of every vocabulary row."""

    def __init__(self, pretrained: torch.Tensor, every: int):
        self.pretrained, self.every = pretrained, max(1, every)
        self.steps, self.rows = [0], [torch.zeros(pretrained.shape[0])]

    def __call__(self, step, model):
        if step % self.every == 0:
            self.record(step, model)

    def record(self, step, model):
        if self.steps[-1] != step:
            self.steps.append(step)
            self.rows.append(row_distances(model.get_input_embeddings().weight, self.pretrained).cpu())

    def history(self) -> torch.Tensor:
        return torch.stack(self.rows)


def distance_curves(r: RoundResult, present: torch.Tensor, highlight: int = 6, points: int = 60) -> dict:
    """What the paper's Figure 1 draws, small enough for a report: at up to `points` recorded steps, the
    mean, 5th and 95th percentile and maximum distance of the tokens present in the round's data that it did
    not flag, and the curve of each of its `highlight` top flagged tokens (by id)."""
    h = r.history.float()
    keep = sorted({round(i * (len(r.history_steps) - 1) / max(1, points - 1)) for i in range(points)})
    h = h[keep]
    flagged = [t for t, _ in r.flagged]
    mask = present.clone()
    mask[flagged] = False
    clean = h[:, mask]
    q = torch.quantile(clean, torch.tensor([0.05, 0.95]), dim=1) if clean.shape[1] else torch.zeros(2, len(keep))
    return {"steps": [r.history_steps[i] for i in keep],
            "clean_mean": clean.mean(1).tolist() if clean.shape[1] else [], "clean_p05": q[0].tolist(),
            "clean_p95": q[1].tolist(), "clean_max": clean.max(1).values.tolist() if clean.shape[1] else [],
            "tokens": {int(t): h[:, t].tolist() for t in flagged[:highlight]}}


def _run_round(n, model, tokenizer, input_ids, labels, cfg: BTUConfig, pretrained, exclude, trainable,
               batch_size, lr, k) -> RoundResult:
    steps = max(1, int(cfg.detect_epochs * -(-len(input_ids) // batch_size)))
    recorder = DistanceRecorder(pretrained, cfg.record_every or max(1, steps // 100))
    tcfg = TrainConfig(epochs=cfg.detect_epochs, batch_size=batch_size, lr=lr, max_length=cfg.max_length,
                       trainable=trainable, precision=cfg.precision, seed=cfg.seed + 100 * n,
                       progress=cfg.progress, desc=f"BTU detection round {n}")
    start = time.perf_counter()
    res = train(model, tokenizer, input_ids=input_ids, labels=labels, config=tcfg, on_step=recorder)
    weight = model.get_input_embeddings().weight
    recorder.record(res.steps, model)
    dist = row_distances(weight, pretrained).cpu()
    counts = row_counts(input_ids, len(dist))
    scores = ranking_scores(dist, counts, cfg.score, cfg.min_count)
    return RoundResult(n, top_tokens(scores, k, exclude), dist, recorder.history(), recorder.steps,
                       time.perf_counter() - start, res.final_loss,
                       weight.detach().float().cpu().clone() if n == 1 else None, counts)


def _reflag(r: RoundResult, k: int, exclude, cfg: BTUConfig) -> RoundResult:
    """The same trained round, flagged again with another k or score (a sweep needs no retraining)."""
    scores = ranking_scores(r.distances, r.counts, cfg.score, cfg.min_count)
    return RoundResult(r.round, top_tokens(scores, k, exclude), r.distances, r.history, r.history_steps,
                       r.seconds, r.final_loss, r.trained_embeddings, r.counts)


def detect(model, tokenizer, input_ids, labels, num_labels: int, cfg: BTUConfig,
           previous: DetectionResult | None = None) -> DetectionResult:
    """Run the configured rounds on copies of `model` (a pretrained classifier, left untouched).

    previous: an earlier result on the same data, model and training settings; its rounds 1
    and 2 are reused (re-ranked for this alpha) and round 3 is retrained only when round 2's
    flagged set changed. Subsets of rounds and alpha sweeps then cost almost nothing.
    """
    start = time.perf_counter()
    pretrained = model.get_input_embeddings().weight.detach().float().cpu().clone()
    vocab = pretrained.shape[0]
    k = flag_count(cfg.alpha, vocab)
    exclude = set(tokenizer.all_special_ids)
    out = DetectionResult()
    old = {r.round: r for r in previous.rounds} if previous is not None else {}

    def shallow(seed_offset):
        torch.manual_seed(cfg.seed + seed_offset)
        return ShallowClassifier(model, num_labels, cfg.shallow_masked_pooling, cfg.shallow_pad_to)

    if 1 in cfg.rounds:
        if 1 in old:
            out.rounds.append(_reflag(old[1], k, exclude, cfg))
        else:
            m = copy.deepcopy(model)
            out.rounds.append(_run_round(1, m, tokenizer, input_ids, labels, cfg, pretrained, exclude, "embeddings",
                                         cfg.detect_batch_size, cfg.detect_lr, k))
            del m
    if 2 in cfg.rounds:
        if 2 in old:
            r2 = _reflag(old[2], k, exclude, cfg)
        else:
            r2 = _run_round(2, shallow(200), tokenizer, input_ids, labels, cfg, pretrained, exclude, "all",
                            cfg.shallow_batch_size, cfg.shallow_lr, k)
        out.rounds.append(r2)
        if 3 in cfg.rounds:
            removed = {t for t, _ in r2.flagged}
            if 3 in old and 2 in old and removed == {t for t, _ in old[2].flagged}:
                out.rounds.append(_reflag(old[3], k, exclude | removed, cfg))
            else:
                ids3 = [[t for t in row if t not in removed] for row in input_ids]
                out.rounds.append(_run_round(3, shallow(300), tokenizer, ids3, labels, cfg, pretrained,
                                             exclude | removed, "all", cfg.shallow_batch_size, cfg.shallow_lr, k))
    out.seconds = time.perf_counter() - start
    return out
