"""How fast ONION's leave-one-out perplexities are, against a plain loop and against this machine's floor.

Four ways to score the same texts with the same LM at the same precision, in one run:
  plain    every variant (the text, and the text without each word) on its own, one forward pass each;
  batched  the same variants, length-bucketed into batches (no sharing);
  buckets  shared prefixes, one or more rows per text, length-bucketed (no packing of texts together);
  shared   btu's: one tree per text whose leave-one-out variants share their prefixes, trees packed into rows.
The floor: the FLOPs the shared path must do (the LM's linear layers for every token it feeds, the LM head for
every token it scores, causal attention over each token's real context), at the bf16 (or fp32) matrix-multiply
peak measured in the same run. And what the whole SST-2 training set would take at the measured rate.

    .venv/bin/python benchmarks/onion_speed.py [--texts 40] [--lm smollm2] [--precision auto] [--compile]
        > benchmarks/results/onion_speed.txt   (also writes benchmarks/results/onion_speed.json)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SST2 = ROOT / ".." / "shared" / "datasets" / "sst2" / "train.tsv"

from btu.language_model import CausalLM  # noqa: E402
from btu.perplexity import Text, batches, bins, plain_loop, plan_text, score_texts, text_rows, word_pieces  # noqa: E402


def matmul_seconds(m: int, k: int, n: int, dtype, repeat: int = 5, weight_layout: bool = False) -> float:
    """The best time of one (m, k) x (k, n) multiply in `dtype`; weight_layout: the right matrix stored (n, k) and
    transposed, as nn.Linear keeps its weight."""
    import torch

    a = torch.randn(m, k).to(dtype)
    b = torch.randn(n, k).to(dtype).t() if weight_layout else torch.randn(k, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(dtype, n: int = 2048, repeat: int = 5) -> float:
    """The best FLOP/s of an n x n x n matrix multiply in `dtype` (this machine's matrix peak)."""
    return 2 * n ** 3 / matmul_seconds(n, n, n, dtype, repeat)


def lm_shape(model) -> dict:
    """Per-token multiply-adds of the linear layers inside the transformer blocks, and of the LM head."""
    import torch

    head = model.get_output_embeddings()
    blocks = sum(m.weight.numel() for name, m in model.base_model.named_modules()
                 if isinstance(m, torch.nn.Linear))
    cfg = model.config
    return {"block_macs": blocks, "head_macs": head.weight.numel(), "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size}


def work(plans: list[Text], shape: dict, pack: int = 10 ** 9) -> dict:
    """Tokens fed and scored with shared prefixes (each text in one row: the least work), and the floor's FLOPs
    for them."""
    fed = scored = attn = 0
    for i, t in enumerate(plans):
        for r in text_rows(t, i, True, pack):
            fed += len(r.tokens)
            scored += len(r.targets)
            # causal attention over each token's real context (its prefix and its segment so far): QK and AV
            attn += sum(p + (j - s) + 1 for j, (s, p) in enumerate(zip(r.seg_start, r.seg_prefix)))
    flops = 2 * fed * shape["block_macs"] + 2 * scored * shape["head_macs"] + 4 * attn * shape["hidden"] * \
        shape["layers"]
    return {"tokens_fed": fed, "tokens_scored": scored, "flops": flops}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None):
    import numpy as np
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=40, help="SST-2 training rows scored by all three ways")
    p.add_argument("--lm", default="smollm2")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="also the shared path through torch.compile (lm_compile): "
                   "its one-off compile, its first run and a second run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "onion_speed.json"))
    a = p.parse_args(argv)
    if not SST2.exists():
        sys.exit(f"SST-2 not found at {SST2} (the shared data sets are read in place)")
    rows = [line.split("\t")[0] for line in SST2.read_text().splitlines()[1:]]
    sample = random.Random(a.seed).sample(rows, a.texts)
    words = [t.split()[:100] for t in sample]
    lm = CausalLM(a.lm, precision=a.precision)
    lm.model  # load outside the timings
    torch.manual_seed(0)
    dtype = torch.bfloat16 if lm.precision == "bf16" else torch.float32
    score_texts(lm, words[:2])  # warm up
    shared, t_shared = timed(lambda: score_texts(lm, words))
    _, t_buckets = timed(lambda: score_texts(lm, words, bin_pack=False))
    batched, t_batched = timed(lambda: score_texts(lm, words, share_prefixes=False, bin_pack=False))
    plain, t_plain = timed(lambda: plain_loop(lm, words))
    compiled = {}
    if a.compile:
        _, compiled["compile"] = timed(lambda: score_texts(lm, words[:4], compile=True))
        _, compiled["first_run"] = timed(lambda: score_texts(lm, words, compile=True))
        out, compiled["second_run"] = timed(lambda: score_texts(lm, words, compile=True))
        compiled["max_relative_difference_vs_shared"] = max(
            float(np.nanmax(np.abs(np.array(c) - np.array(q)) / np.array(q))) for c, q in zip(out, shared))
    peak = matmul_peak(dtype)

    pieces = word_pieces(lm.tokenizer, {w for t in rows for w in t.split()[:100]})
    encode_word = pieces.__getitem__
    plans = [plan_text(w, encode_word, lm.bos_id) for w in words]
    shape = lm_shape(lm.model)
    need = work(plans, shape)
    floor = need["flops"] / peak
    fed_batched = sum(len(r.tokens) for i, t in enumerate(plans) for r in text_rows(t, i, False, 1))
    fed_shared = sum(len(r.tokens) for i, t in enumerate(plans) for r in text_rows(t, i, True, 256))

    def padded(rows) -> int:  # the tokens the batches carry, padding included
        return sum(len(b) * max(len(r.tokens) for r in b) for b in batches(rows, 4096))

    pad_batched = padded([r for i, t in enumerate(plans) for r in text_rows(t, i, False, 1)])
    pad_buckets = padded([r for i, t in enumerate(plans) for r in text_rows(t, i, True, 256)])
    pad_shared = padded(bins([r for i, t in enumerate(plans) for r in text_rows(t, i, True, 256)], 256))
    # the whole SST-2 training set at the shared path's measured rate (tokens fed per second)
    all_plans = [plan_text(t.split()[:100], encode_word, lm.bos_id) for t in rows if len(t.split()) >= 2]
    all_need = work(all_plans, shape)
    rate = need["tokens_fed"] / t_shared  # the least tokens per second: what the shared path gets through
    rel = [float(np.nanmax(np.abs(np.array(s) - np.array(q)) / np.array(q))) for s, q in zip(shared, plain)]
    result = {
        "lm": a.lm, "precision": lm.precision, "texts": a.texts, "threads": torch.get_num_threads(),
        "seconds": {"plain": t_plain, "batched": t_batched, "shared_buckets_only": t_buckets, "shared": t_shared},
        "speedup_over_plain": {"batched": t_plain / t_batched, "shared_buckets_only": t_plain / t_buckets,
                               "shared": t_plain / t_shared},
        "tokens_fed": {"batched": fed_batched, "shared": fed_shared, "least": need["tokens_fed"]},
        "tokens_padded": {"batched": pad_batched, "shared_buckets_only": pad_buckets, "shared": pad_shared},
        "tokens_scored": need["tokens_scored"],
        "matmul_peak_gflops": peak / 1e9, "floor_seconds": floor, "shared_over_floor": t_shared / floor,
        "shared_gflops": need["flops"] / t_shared / 1e9,
        "max_relative_difference_vs_plain": max(rel),
        "compiled": compiled and {**compiled, "speedup_over_plain": t_plain / compiled["second_run"],
                                  "over_floor": compiled["second_run"] / floor},
        "sst2_train": {"rows": len(rows), "tokens_fed": all_need["tokens_fed"],
                       "minutes_at_measured_rate": all_need["tokens_fed"] / rate / 60,
                       "floor_minutes": all_need["flops"] / peak / 60},
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    s = result["seconds"]
    print(f"ONION scoring, {a.texts} SST-2 training rows, {a.lm} in {lm.precision}, {result['threads']} threads")
    print(f"{'way':<10}{'seconds':>10}{'tokens fed':>12}{'with padding':>14}{'x plain':>10}")
    print(f"{'plain':<10}{s['plain']:>10.1f}{'':>12}{'':>14}{1.0:>10.1f}")
    print(f"{'batched':<10}{s['batched']:>10.1f}{fed_batched:>12}{pad_batched:>14}{t_plain / t_batched:>10.1f}")
    print(f"{'buckets':<10}{t_buckets:>10.1f}{fed_shared:>12}{pad_buckets:>14}{t_plain / t_buckets:>10.1f}")
    print(f"{'shared':<10}{s['shared']:>10.1f}{fed_shared:>12}{pad_shared:>14}{t_plain / t_shared:>10.1f}")
    print(f"floor: {floor:.1f} s ({need['tokens_fed']} tokens fed at the least, {need['flops'] / 1e12:.2f} TFLOP"
          f" at the measured {lm.precision} matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s); shared / floor = {t_shared / floor:.2f}")
    if compiled:
        c = compiled
        print(f"shared through torch.compile: compile {c['compile']:.1f} s, first run {c['first_run']:.1f} s, second "
              f"run {c['second_run']:.1f} s ({t_plain / c['second_run']:.1f}x plain; / floor = "
              f"{c['second_run'] / floor:.2f}; largest relative difference from eager "
              f"{c['max_relative_difference_vs_shared']:.1e})")
    print(f"largest relative difference of the shared path's perplexities from the plain loop's: {max(rel):.2e}")
    st = result["sst2_train"]
    print(f"SST-2 training set ({st['rows']} rows, {st['tokens_fed']} tokens fed): "
          f"{st['minutes_at_measured_rate']:.0f} min at the measured rate, floor {st['floor_minutes']:.0f} min")


if __name__ == "__main__":
    main()
