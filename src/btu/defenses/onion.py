"""ONION (Qi et al. 2021): a word whose removal lowers a language model's perplexity by more than a threshold
is an outlier, and likely an inserted trigger; remove it.

`onion` cleans the training rows' text (or, mode drop, drops the rows that have such a word), then the runner
trains on the result; `onion-input` cleans each input before the trained model predicts it. The suspicion of
word i is f_i = p0 - p_i (the text's perplexity minus the perplexity without word i); the paper's set-up removes
every word with f_i > 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..language_model import DEFAULT_LM, LM_ALIASES
from .base import Defense, FilterResult, Guard, register
from .options import Options, option


@dataclass
class ONIONOptions(Options):
    lm: str = option(DEFAULT_LM, f"the causal LM: {', '.join(LM_ALIASES)}, a model folder, a .gguf file or a hub "
                                 "name")
    threshold: float = option(0.0, "remove a word when its removal lowers the perplexity by more than this "
                                   "(the paper's set-up: 0)")
    max_words: int = option(100, "score the first this many words of a text (the rest are kept)", low=2)
    lm_precision: str = option("auto", "the LM's precision (auto: bf16 where the device has it)",
                               choices=("auto", "bf16", "fp32"))
    lm_device: str = option("auto", "where the LM runs (auto: CUDA when there is one)", choices=("auto", "cpu", "cuda"))
    share_prefixes: bool = option(True, "score a text's leave-one-out variants in one packed row that computes "
                                        "their shared prefixes once")
    batch_tokens: int = option(4096, "padded tokens per LM batch", low=64)
    lm_compile: str = option("auto", "run the LM through torch.compile, about twice as fast after a one-off compile "
                                     "of about a minute (auto: on a CPU with a C++ compiler, from 200,000 tokens "
                                     "to score)", choices=("auto", "on", "off"))
    cache: str = option("", "the LM score cache (SQLite; empty: BTU_CACHE/lm-scores.sqlite; none: no cache)")


@dataclass
class ONIONFilterOptions(ONIONOptions):
    mode: str = option("clean", "clean: remove the outlier words from each row; drop: drop the rows that have one "
                                "(use a threshold well above 0)", choices=("clean", "drop"))


def suspicious_words(words: list[str], ppl: list[float], threshold: float) -> list[int]:
    """Indices of the words whose removal lowers the perplexity by more than `threshold`."""
    if len(ppl) < 2:
        return []
    return [i for i, p in enumerate(ppl[1:]) if ppl[0] - p > threshold]


def clean_texts(lm, texts: list[str], opts: ONIONOptions, progress: bool = False):
    """(cleaned texts, removed word indices per text): each text without its suspicious words."""
    from ..perplexity import default_cache_path, leave_one_out
    from ..score_cache import ScoreCache

    cache = None if opts.cache == "none" else ScoreCache(opts.cache or default_cache_path())
    try:
        scores = leave_one_out(lm, texts, opts.max_words, cache=cache, progress=progress,
                               share_prefixes=opts.share_prefixes, batch_tokens=opts.batch_tokens,
                               compile={"on": True, "off": False}.get(opts.lm_compile, "auto"))
    finally:
        if cache is not None:
            cache.close()
    out, removed = [], []
    for text, ppl in zip(texts, scores):
        words = text.split()
        drop = suspicious_words(words, ppl, opts.threshold)
        gone = set(drop)
        out.append(" ".join(w for i, w in enumerate(words) if i not in gone) if drop else text)
        removed.append(drop)
    return out, removed


def inserted_words(poisoned: str, clean: str) -> Counter:
    """The words of a poisoned text that its clean original lacks (the trigger's, for an insertion attack)."""
    return Counter(poisoned.split()) - Counter(clean.split())


class _ONION(Defense):
    Options = ONIONOptions
    needs = frozenset({"pretrained", "language_model"})
    quick_options = {"max_words": 12, "cache": "none"}

    def language_model(self, ctx):
        from ..language_model import CausalLM

        if getattr(self, "_lm", None) is None:
            o = self.options
            self._lm = CausalLM(o.lm, o.lm_precision, o.lm_device, allow_pickle=ctx.allow_pickle,
                                trust_remote_code=ctx.trust_remote_code)
        return self._lm


@register
class ONION(_ONION):
    """ONION as a training filter: the training rows without their outlier words (mode clean), or without the
    rows that have one (mode drop)."""

    name = "onion"
    stage = "data"
    summary = "ONION: remove the words whose deletion lowers a language model's perplexity (training rows)"
    result_name = "ONION filter + training"

    Options = ONIONFilterOptions

    def filter(self, ctx, state) -> FilterResult:
        from ..training.batching import encode

        ds = ctx.train
        with ctx.timed("lm_scoring"):
            cleaned, removed = clean_texts(self.language_model(ctx), list(ds.texts), self.options,
                                           ctx.settings.progress)
        scores = [float(len(r)) for r in removed]
        if self.options.mode == "drop":
            kept = [i for i, r in enumerate(removed) if not r]
            data, ids = ds.subset(kept), [ctx.input_ids[i] for i in kept]
        else:
            kept = list(range(len(ds)))
            data = ds.subset(kept)
            data.texts = cleaned
            changed = [i for i, r in enumerate(removed) if r]
            ids = list(ctx.input_ids)
            for i, new in zip(changed, encode(ctx.tokenizer, [cleaned[i] for i in changed], ctx.settings.max_length)):
                ids[i] = new
        self._summary = self.summarize(ds, removed)
        return FilterResult(kept, data, ids, scores, {"onion": self._summary})

    def summarize(self, ds, removed) -> dict:
        """Rows and words changed; with ground truth, the precision and recall of the changed rows and the share of
        the inserted words removed."""
        changed = [i for i, r in enumerate(removed) if r]
        words = sum(len(t.split()) for t in ds.texts)
        out = {"mode": self.options.mode, "rows_changed": len(changed), "rows": len(ds),
               "words_removed": sum(len(r) for r in removed), "words": words}
        if ds.poisoned is not None:
            poisoned = [i for i, p in enumerate(ds.poisoned) if p]
            hit = sum(1 for i in changed if ds.poisoned[i])
            out.update(changed_precision=100.0 * hit / len(changed) if changed else None,
                       changed_recall=100.0 * hit / len(poisoned) if poisoned else None)
            clean = ds.columns.get("clean_text")
            if clean is not None and poisoned:
                total = gone = 0
                for i in poisoned:
                    inserted = inserted_words(ds.texts[i], clean[i])
                    words_i = ds.texts[i].split()
                    removed_i = Counter(words_i[j] for j in removed[i])
                    total += sum(inserted.values())
                    gone += sum(min(n, removed_i[w]) for w, n in inserted.items())
                out["inserted_words_removed"] = 100.0 * gone / total if total else None
        return out

    def report(self, ctx, state) -> dict:
        return {"onion": getattr(self, "_summary", {})}

    def console(self, report: dict) -> str:
        return onion_lines(report.get("onion") or {})

    def markdown(self, report: dict) -> str:
        text = onion_lines(report.get("onion") or {})
        return f"## ONION\n\n{text}\n" if text else ""


def onion_lines(s: dict) -> str:
    if not s:
        return ""
    lines = [f"ONION ({s['mode']}): changed {s['rows_changed']} of {s['rows']} rows, removed {s['words_removed']} "
             f"of {s['words']} words."]
    if s.get("changed_precision") is not None:
        lines.append(f"Of the changed rows {s['changed_precision']:.1f} % are poisoned; {s['changed_recall']:.1f} % "
                     "of the poisoned rows changed.")
    if s.get("inserted_words_removed") is not None:
        lines.append(f"Inserted words removed from the poisoned rows: {s['inserted_words_removed']:.1f} %.")
    return "\n".join(lines)


class ONIONGuard(Guard):
    """Cleans each input with ONION, then predicts it with the model; rejects nothing."""

    def __init__(self, defense, ctx, model):
        self.defense, self.ctx, self.model = defense, ctx, model
        self.changed = self.seen = 0

    def predict(self, texts):
        from ..training import predict

        ctx = self.ctx
        cleaned, removed = clean_texts(self.defense.language_model(ctx), list(texts), self.defense.options,
                                       ctx.settings.progress)
        self.seen += len(texts)
        self.changed += sum(1 for r in removed if r)
        preds = predict(self.model, ctx.tokenizer, cleaned, max_length=ctx.settings.max_length,
                        precision=ctx.settings.precision)
        return preds, [False] * len(texts)


@register
class ONIONInput(_ONION):
    """ONION as an input guard: every input to the trained model is cleaned first."""

    name = "onion-input"
    stage = "input"
    needs = frozenset({"pretrained", "victim", "language_model"})
    summary = "ONION on inputs: remove outlier words from each input before the trained model predicts it"
    result_name = "ONION input cleaning"

    def guard(self, ctx, state, model):
        self._guard = ONIONGuard(self, ctx, model)
        return self._guard

    def report(self, ctx, state) -> dict:
        g = getattr(self, "_guard", None)
        return {"onion": {"inputs": g.seen, "inputs_changed": g.changed}} if g is not None else {}

    def console(self, report: dict) -> str:
        s = report.get("onion") or {}
        return f"ONION changed {s['inputs_changed']} of {s['inputs']} inputs." if s else ""
