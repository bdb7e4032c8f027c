"""Leave-one-word-out perplexities (ONION's scores) with a causal LM, fast: shared prefixes, packed rows,
length-bucketed batches, bf16 where the device has it, and scores cached on disk by (LM, text).

A text's words w1..wn are tokenized one by one with a leading space, after the LM's `<|endoftext|>`, so every
variant is a concatenation of the same pieces. The variant without w_k shares every token before w_k with the
whole text. One packed row holds the whole text and, for each variant, the tokens after w_k at their real
positions, attending to the shared prefix and to themselves only (a tree-shaped attention mask): the prefix is
computed once instead of n + 1 times. Only the positions whose next token is scored go through the LM head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FORMAT = 1  # bump when what a cached score means changes
AUTO_COMPILE_TOKENS = 200_000  # compile="auto" compiles from this many tokens to feed (minutes of eager scoring)


@dataclass
class Text:
    """One text's pieces: the scored words' token ids, the whole text's tokens and where each word starts."""

    pieces: list[list[int]]
    full: list[int]  # bos + the pieces, concatenated
    starts: list[int]  # the offset of each word's first token in `full`


@dataclass
class Row:
    """One row of a batch: segments of tokens, each attending to the row's first `prefix` tokens and to itself
    causally, and the (position, target token, owner) of each scored next token."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seg_start: list[int] = field(default_factory=list)  # per token: where its segment starts in the row
    seg_prefix: list[int] = field(default_factory=list)  # per token: how many of its tree's first tokens it sees
    seg_base: list[int] = field(default_factory=list)  # per token: where its tree (one text's rows) starts
    targets: list[tuple[int, int, tuple]] = field(default_factory=list)  # (index in row, token, (text, variant, slot))

    def add(self, tokens, first_position: int, prefix: int) -> int:
        start = len(self.tokens)
        self.tokens += tokens
        self.positions += range(first_position, first_position + len(tokens))
        self.seg_start += [start] * len(tokens)
        self.seg_prefix += [prefix] * len(tokens)
        self.seg_base += [0] * len(tokens)
        return start


def merge(rows: list[Row]) -> Row:
    """Rows side by side in one row: each keeps its own positions and sees only itself."""
    out = Row()
    for r in rows:
        off = len(out.tokens)
        out.tokens += r.tokens
        out.positions += r.positions
        out.seg_start += [s + off for s in r.seg_start]
        out.seg_prefix += r.seg_prefix
        out.seg_base += [b + off for b in r.seg_base]
        out.targets += [(j + off, t, o) for j, t, o in r.targets]
    return out


def bins(rows: list[Row], capacity: int) -> list[Row]:
    """Rows packed best-fit-decreasing into rows of at most `capacity` tokens (a longer row stays alone), so a
    batch of them pads little: length buckets alone pad a quarter of the tokens."""
    packed: list[list[Row]] = []
    open_bins: dict[int, list[int]] = {}  # room left -> indices of the bins with that much room
    for r in sorted(rows, key=lambda r: -len(r.tokens)):
        n = len(r.tokens)
        room = next((c for c in range(n, capacity + 1) if open_bins.get(c)), None)
        if room is None:
            packed.append([r])
            i, left = len(packed) - 1, capacity - n
        else:
            i = open_bins[room].pop()
            packed[i].append(r)
            left = room - n
        if left > 0:
            open_bins.setdefault(left, []).append(i)
    return [merge(b) for b in packed]


def word_pieces(tokenizer, words) -> dict[str, list[int]]:
    """Each distinct word's token ids with a leading space, in one batched call (a call per word costs
    milliseconds with some tokenizers)."""
    words = sorted(words)
    ids = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"] if words else []
    return dict(zip(words, ids))


def plan_text(words: list[str], encode_word, bos: int) -> Text:
    pieces = [encode_word(w) for w in words]
    full, starts = [bos], []
    for p in pieces:
        starts.append(len(full))
        full += p
    return Text(pieces, full, starts)


def text_rows(t: Text, i: int, share_prefixes: bool, pack_tokens: int) -> list[Row]:
    """The rows that score text `i`'s whole sentence (variant 0, per-position slots) and each leave-one-out
    variant k (1..n; its scores summed)."""
    full, L = t.full, len(t.full)
    rows = []
    if not share_prefixes:  # each variant its own causal row
        row = Row()
        row.add(full[:-1], 0, 0)
        row.targets = [(j, full[j + 1], (i, 0, j)) for j in range(L - 1)]
        rows.append(row)
        for k, (s, p) in enumerate(zip(t.starts, t.pieces), start=1):
            v = full[:s] + full[s + len(p):]
            if len(v) < 2:
                continue
            row = Row()
            row.add(v[:-1], 0, 0)
            row.targets = [(j, v[j + 1], (i, k, None)) for j in range(len(v) - 1)]
            rows.append(row)
        return rows

    def new_row(first: bool) -> Row:
        row = Row()
        row.add(full[:-1], 0, 0)  # the last token is only a target
        if first:
            row.targets = [(j, full[j + 1], (i, 0, j)) for j in range(L - 1)]
        return row

    row = new_row(True)
    for k, (s, p) in enumerate(zip(t.starts, t.pieces), start=1):
        suffix = full[s + len(p):]
        if not suffix:
            continue  # the variant is a prefix of the text: its terms are the text's own
        if len(row.tokens) + len(suffix) - 1 > pack_tokens and len(row.tokens) > L - 1:
            rows.append(row)
            row = new_row(False)
        row.targets.append((s - 1, suffix[0], (i, k, None)))  # predicted from the shared prefix's end
        start = row.add(suffix[:-1], s, s)
        row.targets += [(start + m, suffix[m + 1], (i, k, None)) for m in range(len(suffix) - 1)]
    rows.append(row)
    return rows


def batches(rows: list[Row], batch_tokens: int) -> list[list[Row]]:
    """Rows sorted by length, grouped so a batch's padded size stays within `batch_tokens`."""
    out, cur, longest = [], [], 0
    for r in sorted(rows, key=lambda r: len(r.tokens)):
        n = len(r.tokens)
        if cur and max(longest, n) * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur, longest = [], 0
        cur.append(r)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


def one_shape(rows: list[Row], batch_tokens: int, pack_tokens: int, pad_id: int) -> list[list[Row]]:
    """Batches of packed rows that all have one shape (batch_tokens // pack_tokens rows of pack_tokens tokens; the
    last filled with padding rows), so a compiled LM specialises once; rows longer than a pack go in length
    buckets of their own."""
    fit = [r for r in rows if len(r.tokens) <= pack_tokens]
    per = max(1, batch_tokens // pack_tokens)
    out = [fit[i:i + per] for i in range(0, len(fit), per)]
    if out:
        out[-1] = out[-1] + [Row() for _ in range(per - len(out[-1]))]
        for b in out:
            if len(b[-1].tokens) < pack_tokens:  # fixes the length (a padding row's tokens are not scored)
                filler = Row()
                filler.add([pad_id] * (pack_tokens - len(b[-1].tokens)), 0, 0)
                b[-1] = merge([b[-1], filler])
    return out + batches([r for r in rows if len(r.tokens) > pack_tokens], batch_tokens)


def should_compile(compile, lm, tokens: int) -> bool:
    """compile: True, False or "auto" (on a CPU with a C++ compiler for inductor, from AUTO_COMPILE_TOKENS tokens:
    a fresh compile takes about a minute, and compiled scoring is about twice as fast)."""
    import shutil

    if getattr(lm, "_compile_failed", False):
        return False
    if compile != "auto":
        return bool(compile)
    return (str(lm.device) == "cpu" and tokens >= AUTO_COMPILE_TOKENS
            and any(shutil.which(c) for c in ("c++", "g++", "clang++")))


def compiled_base(lm):
    """The LM's transformer compiled once with static shapes (torch.compile's inductor fuses the elementwise work
    around the matrix multiplies); kept on the CausalLM."""
    import torch

    if getattr(lm, "_compiled_base", None) is None:
        lm._compiled_base = torch.compile(lm.model.base_model, dynamic=False)
    return lm._compiled_base


def forward_batch(model, rows: list[Row], pad_id: int, device, head_chunk: int = 256, transformer=None):
    """The negative log-likelihood of every row's targets (fp32, in the rows' target order). transformer: what runs
    the transformer (default: the model's own base_model)."""
    import torch

    B, P = len(rows), max(len(r.tokens) for r in rows)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    pos = torch.zeros((B, P), dtype=torch.long)
    start = torch.arange(P).expand(B, P).clone()  # padding: a segment of its own, seeing itself
    prefix = torch.zeros((B, P), dtype=torch.long)
    base = torch.zeros((B, P), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r.tokens)
        ids[b, :n] = torch.tensor(r.tokens)
        pos[b, :n] = torch.tensor(r.positions)
        start[b, :n] = torch.tensor(r.seg_start)
        prefix[b, :n] = torch.tensor(r.seg_prefix)
        base[b, :n] = torch.tensor(r.seg_base)
    q = torch.arange(P).view(1, P, 1)
    k = torch.arange(P).view(1, 1, P)
    base = base.unsqueeze(-1)
    mask = ((k >= base) & (k < base + prefix.unsqueeze(-1))) | ((k >= start.unsqueeze(-1)) & (k <= q))
    bi = torch.tensor([b for b, r in enumerate(rows) for _ in r.targets])
    qi = torch.tensor([j for r in rows for j, _, _ in r.targets])
    tgt = torch.tensor([t for r in rows for _, t, _ in r.targets], device=device)
    with torch.no_grad():
        run = transformer if transformer is not None else model.base_model
        hidden = run(input_ids=ids.to(device), attention_mask=mask.unsqueeze(1).to(device),
                     position_ids=pos.to(device)).last_hidden_state
        sel = hidden[bi.to(device), qi.to(device)]
        head = model.get_output_embeddings()
        # cross-entropy in the LM's own precision: no fp32 copy of the logits (it accumulates in fp32 anyway)
        nll = [torch.nn.functional.cross_entropy(head(h), t, reduction="none").float()
               for h, t in zip(sel.split(head_chunk), tgt.split(head_chunk))]
    return torch.cat(nll).cpu().numpy()


def combine(texts: list[Text], results: dict, share_prefixes: bool) -> list[list[float]]:
    """Perplexities per text: [whole text, without word 1, ..., without word n]."""
    out = []
    for i, t in enumerate(texts):
        full_nll = results["full"][i]
        csum = np.concatenate([[0.0], np.cumsum(full_nll)])
        ppl = [math.exp(csum[-1] / len(full_nll))]
        for k, (s, p) in enumerate(zip(t.starts, t.pieces), start=1):
            extra, count = results["extra"].get((i, k), (0.0, 0))
            shared = s - 1 if share_prefixes else 0  # the prefix's terms, taken from the whole text's
            n = shared + count
            ppl.append(math.exp((csum[shared] + extra) / n) if n else float("nan"))
        out.append(ppl)
    return out


def score_texts(lm, word_lists: list[list[str]], share_prefixes: bool = True, pack_tokens: int = 256,
                batch_tokens: int = 4096, bin_pack: bool = True, compile=False, progress: bool = False,
                on_batch=None) -> list[list[float]]:
    """Leave-one-out perplexities of each word list (>= 2 words) with the CausalLM `lm`. bin_pack: several texts'
    rows share a row of up to `pack_tokens` (less padding than length buckets alone). compile: run the LM through
    torch.compile, every batch one shape (True, False or "auto": see should_compile). Compiling costs about a
    minute once (inductor's disk cache makes a later process's quicker); in bf16 its scores are also closer to
    fp32's, since the fused kernels keep their intermediates in fp32."""
    from .progress import progress_bar

    tok, model, bos = lm.tokenizer, lm.model, lm.bos_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else bos
    pieces = word_pieces(tok, {w for ws in word_lists for w in ws})
    texts = [plan_text(ws, pieces.__getitem__, bos) for ws in word_lists]
    rows = [r for i, t in enumerate(texts) for r in text_rows(t, i, share_prefixes, pack_tokens)]
    if bin_pack:
        rows = bins(rows, pack_tokens)
    results = {"full": {i: np.zeros(len(t.full) - 1) for i, t in enumerate(texts)}, "extra": {}}
    left = dict.fromkeys(range(len(texts)), 0)  # targets still to score, per text
    for r in rows:
        for _, _, (i, _, _) in r.targets:
            left[i] += 1
    compile = should_compile(compile, lm, sum(len(r.tokens) for r in rows))
    compiled = compiled_base(lm) if compile else None
    plan = one_shape(rows, batch_tokens, pack_tokens, pad) if compile else batches(rows, batch_tokens)
    bar = progress_bar(sum(len(r.tokens) for b in plan for r in b), "LM scoring", "tok", progress)
    for batch in plan:
        use = compiled if compiled is not None and len(batch[0].tokens) <= pack_tokens else None
        try:
            nll = forward_batch(model, batch, pad, lm.device, transformer=use)
        except Exception as e:  # noqa: BLE001 - a compiler that fails on this machine: score eagerly instead
            if use is None or getattr(lm, "_compile_worked", False):
                raise
            import warnings

            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); scoring without it",
                          stacklevel=2)
            compiled = lm._compiled_base = None
            lm._compile_failed = True
            nll = forward_batch(model, batch, pad, lm.device)
        else:
            if use is not None:
                lm._compile_worked = True
        done = set()
        for (_, _, (i, k, slot)), v in zip((t for r in batch for t in r.targets), nll):
            if k == 0:
                results["full"][i][slot] = v
            else:
                e, c = results["extra"].get((i, k), (0.0, 0))
                results["extra"][(i, k)] = (e + float(v), c + 1)
            left[i] -= 1
            if left[i] == 0:
                done.add(i)
        if on_batch is not None and done:
            idx = sorted(done)
            on_batch(idx, combine([texts[i] for i in idx], _subset(results, idx), share_prefixes))
        if bar is not None:
            bar.update(sum(len(r.tokens) for r in batch))
    if bar is not None:
        bar.close()
    return combine(texts, results, share_prefixes)


def _subset(results: dict, idx: list[int]) -> dict:
    pos = {i: n for n, i in enumerate(idx)}
    return {"full": {pos[i]: results["full"][i] for i in idx},
            "extra": {(pos[i], k): v for (i, k), v in results["extra"].items() if i in pos}}


def plain_loop(lm, word_lists: list[list[str]]) -> list[list[float]]:
    """The reference: every variant scored on its own, one forward pass each (the benchmark's baseline, and the
    numbers the fast path must match)."""
    import torch

    tok, model, bos = lm.tokenizer, lm.model, lm.bos_id
    pieces = word_pieces(tok, {w for ws in word_lists for w in ws})
    out = []
    for words in word_lists:
        variants = [words] + [words[:k] + words[k + 1:] for k in range(len(words))]
        ppl = []
        for v in variants:
            ids = [bos] + [t for w in v for t in pieces[w]]
            if len(ids) < 2:
                ppl.append(float("nan"))
                continue
            x = torch.tensor([ids], device=lm.device)
            with torch.no_grad():
                logits = model(input_ids=x).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="mean")
            ppl.append(math.exp(float(nll)))
        out.append(ppl)
    return out


def default_cache_path():
    from .models import cache_dir

    return cache_dir() / "lm-scores.sqlite"


def leave_one_out(lm, texts: list[str], max_words: int = 100, cache=None, progress: bool = False,
                  **kw) -> list[list[float]]:
    """[whole text, without word 1, ..., without word n] perplexities of each text's first `max_words`
    whitespace words ([] for a text of fewer than two words). cache: a ScoreCache (or None): scores found there
    are not recomputed, new ones are written as each batch finishes."""
    words = [t.split()[:max_words] for t in texts]
    keys = [" ".join(w) for w in words]
    lm_key = f"{lm.identity}:f{FORMAT}"
    todo = sorted({k for k, w in zip(keys, words) if len(w) >= 2})
    found = cache.get(lm_key, todo) if cache is not None else {}
    missing = [k for k in todo if k not in found]
    if missing:
        def keep(idx, scores):
            if cache is not None:
                cache.put(lm_key, {missing[i]: s for i, s in zip(idx, scores)})

        scores = score_texts(lm, [k.split(" ") for k in missing], progress=progress, on_batch=keep, **kw)
        found.update(zip(missing, scores))
    return [found[k] if len(w) >= 2 else [] for k, w in zip(keys, words)]
