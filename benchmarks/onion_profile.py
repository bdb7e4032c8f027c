"""Where ONION's scoring time goes, and what changes to it buy, on 40 seeded SST-2 training rows.

    .venv/bin/python benchmarks/onion_profile.py profile      # torch.profiler's top operators over one scoring
    .venv/bin/python benchmarks/onion_profile.py head-chunk   # the LM head's chunk size: 2,048 / 512 / 256, twice
    .venv/bin/python benchmarks/onion_profile.py compile      # eager against torch.compile(dynamic=True)
    .venv/bin/python benchmarks/onion_profile.py compile-static [--freeze]  # every batch one shape, compiled
    .venv/bin/python benchmarks/onion_profile.py accuracy     # bf16 eager and compiled scores against fp32's
    .venv/bin/python benchmarks/onion_profile.py shapes       # the matrix multiplies alone, at the LM's own shapes
    .venv/bin/python benchmarks/onion_profile.py fused        # a lean Llama forward (fused QKV, gate-up) against HF's

Each mode compares within one process (the machine's speed moves between processes); run it on an idle machine.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SST2 = ROOT / ".." / "shared" / "datasets" / "sst2" / "train.tsv"

import btu.perplexity as P  # noqa: E402
from btu.language_model import CausalLM  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return round(time.perf_counter() - t, 2)


def main(argv=None):
    import torch

    mode = (argv or sys.argv[1:] or ["profile"])[0]
    modes = ("profile", "head-chunk", "compile", "compile-static", "accuracy", "shapes", "fused")
    if mode not in modes:
        sys.exit(f"unknown mode {mode!r}: {', '.join(modes)}")
    if not SST2.exists():
        sys.exit(f"SST-2 not found at {SST2} (the shared data sets are read in place)")
    rows = [line.split("\t")[0] for line in SST2.read_text().splitlines()[1:]]
    words = [t.split()[:100] for t in random.Random(0).sample(rows, 40)]
    lm = CausalLM("smollm2", precision="auto")
    model = lm.model
    P.score_texts(lm, words[:2])  # warm up
    if mode == "profile":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            P.score_texts(lm, words)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    elif mode == "head-chunk":
        forward = P.forward_batch
        for _ in range(2):
            for chunk in (2048, 512, 256):
                P.forward_batch = lambda m, r, p, d, c=chunk: forward(m, r, p, d, head_chunk=c)
                print(f"head chunk {chunk}: {timed(lambda: P.score_texts(lm, words))} s", flush=True)
        P.forward_batch = forward
    elif mode == "compile":
        print(f"eager: {timed(lambda: P.score_texts(lm, words))} s", flush=True)
        model.model.forward = torch.compile(model.model.forward, dynamic=True)
        print(f"compiling (4 rows): {timed(lambda: P.score_texts(lm, words[:4]))} s", flush=True)
        for _ in range(2):
            print(f"compiled: {timed(lambda: P.score_texts(lm, words))} s", flush=True)
    elif mode == "compile-static":
        compile_static(lm, words, freeze="--freeze" in (argv or sys.argv[1:]))
    elif mode == "accuracy":
        accuracy(lm, words)
    elif mode == "shapes":
        shapes(lm, words)
    elif mode == "fused":
        fused(lm, words)


def compile_static(lm, words, freeze: bool) -> None:
    """Every batch one shape (score_texts' compile path: 16 rows of 256 tokens), so torch.compile(dynamic=False)
    specialises once and inductor can fuse the elementwise work around the multiplies (with --freeze: weights
    folded in and pre-packed for oneDNN): eager and compiled at that same shape."""
    compiled_base = P.compiled_base
    P.compiled_base = lambda lm: lm.model.base_model  # the one-shape plan, run eagerly
    for _ in range(2):
        print(f"eager, one shape: {timed(lambda: P.score_texts(lm, words, compile=True))} s", flush=True)
    P.compiled_base = compiled_base
    if freeze:
        import torch._inductor.config as inductor

        inductor.freezing = True
        inductor.cpp.weight_prepack = True
    print(f"compiling (4 rows): {timed(lambda: P.score_texts(lm, words[:4], compile=True))} s", flush=True)
    for _ in range(3):
        label = "compiled and frozen" if freeze else "compiled"
        print(f"{label}: {timed(lambda: P.score_texts(lm, words, compile=True))} s", flush=True)


def accuracy(lm, words) -> None:
    """How far bf16 perplexities are from fp32's (the same shared path), eager and compiled: ONION's decisions
    compare perplexities, so their rounding matters."""
    import numpy as np

    truth = P.score_texts(CausalLM("smollm2", precision="fp32"), words)
    runs = {"bf16 eager": P.score_texts(lm, words), "bf16 compiled": P.score_texts(lm, words, compile=True)}
    for name, got in runs.items():
        rel = np.concatenate([np.abs(np.array(g) - np.array(t)) / np.array(t) for g, t in zip(got, truth)])
        flips = sum(int(np.sign(g[0] - np.array(g[1:])) @ np.sign(t[0] - np.array(t[1:])) < len(t) - 1)
                    for g, t in zip(got, truth))
        print(f"{name} against fp32: relative difference median {np.nanmedian(rel):.4f}, 99th percentile "
              f"{np.nanpercentile(rel, 99):.3f}, largest {np.nanmax(rel):.3f}; texts where a word's suspicion "
              f"(f_i > 0) differs from fp32's: {flips} of {len(words)}", flush=True)


def shapes(lm, words) -> None:
    """The shared path's matrix multiplies replayed alone at their own shapes (every linear layer of every block
    for each batch's padded tokens, the LM head for each chunk of scored tokens), against the whole scoring and
    the floor's peak: how much of the gap to the floor is the matrices' size, before any other work."""
    import torch
    from onion_speed import matmul_peak, matmul_seconds  # beside this file

    model, tok = lm.model, lm.tokenizer
    dtype = next(model.parameters()).dtype
    pieces = P.word_pieces(tok, {w for ws in words for w in ws})
    texts = [P.plan_text(ws, pieces.__getitem__, lm.bos_id) for ws in words]
    rows = [r for i, t in enumerate(texts) for r in P.text_rows(t, i, True, 256)]
    linears = [(m.in_features, m.out_features) for m in model.model.layers[0].modules()
               if isinstance(m, torch.nn.Linear)]
    layers, head = model.config.num_hidden_layers, model.get_output_embeddings().weight.shape
    total = flops = padded = 0.0
    cache: dict = {}
    for batch in P.batches(rows, 4096):
        m = len(batch) * max(len(r.tokens) for r in batch)
        padded += m
        scored = sum(len(r.targets) for r in batch)
        work = [(m, k, n, layers) for k, n in linears]
        work += [(c, head[1], head[0], 1) for c in [256] * (scored // 256) + [scored % 256] if c]
        for mm, k, n, times in work:
            if (mm, k, n) not in cache:
                cache[(mm, k, n)] = matmul_seconds(mm, k, n, dtype, weight_layout=True)
            total += times * cache[(mm, k, n)]
            flops += times * 2 * mm * k * n
    whole = timed(lambda: P.score_texts(lm, words))
    peak = matmul_peak(dtype)
    print(f"{len(words)} texts, {lm.precision}: the whole scoring {whole:.2f} s; its matrix multiplies alone "
          f"{total:.2f} s ({flops / 1e12:.2f} TFLOP, {flops / total / 1e9:.0f} GFLOP/s); at the 2,048-cube peak "
          f"({peak / 1e9:.0f} GFLOP/s) they would take {flops / peak:.2f} s")
    fed = sum(len(r.tokens) for r in rows)
    print(f"tokens fed {fed}, with the length buckets' padding {padded:.0f} (+{100 * (padded / fed - 1):.0f} %)")
    for (mm, k, n), sec in sorted(cache.items()):
        print(f"  ({mm:5d} x {k:4d}) x ({k:4d} x {n:5d}): {2 * mm * k * n / sec / 1e9:6.0f} GFLOP/s")


class LeanLlama:
    """A Llama forward with fewer, larger operations than transformers' (q, k and v in one multiply, gate and up
    in one, torch's rms_norm, the rotation's sign folded into the sine), called where forward_batch calls the
    model's base_model: does trimming the elementwise work buy time?"""

    def __init__(self, model):
        import torch

        cfg = model.config
        self.H, self.KV, self.D, self.eps = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                                             cfg.rms_norm_eps)
        self.emb, self.norm = model.model.embed_tokens.weight, model.model.norm.weight
        self.layers = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((layer.input_layernorm.weight,
                                torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).t().contiguous(),
                                a.o_proj.weight.t().contiguous(), layer.post_attention_layernorm.weight,
                                torch.cat([m.gate_proj.weight, m.up_proj.weight]).t().contiguous(),
                                m.down_proj.weight.t().contiguous()))
        theta = cfg.rope_parameters["rope_theta"]
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.D, 2, dtype=torch.float32) / self.D)

    def __call__(self, input_ids, attention_mask, position_ids):
        import torch
        import torch.nn.functional as F

        B, T = input_ids.shape
        H, KV, D, half = self.H, self.KV, self.D, self.D // 2
        x = F.embedding(input_ids, self.emb)
        f = position_ids.float()[..., None] * self.inv_freq
        cos = torch.cat([f.cos(), f.cos()], -1).to(x.dtype)[:, None]
        sin = torch.cat([-f.sin(), f.sin()], -1).to(x.dtype)[:, None]
        for w_in, qkv, wo, w_post, gu, wd in self.layers:
            y = F.rms_norm(x, (x.shape[-1],), w_in, self.eps) @ qkv
            q = y[..., :H * D].view(B, T, H, D).transpose(1, 2)
            k = y[..., H * D:(H + KV) * D].view(B, T, KV, D).transpose(1, 2)
            v = y[..., (H + KV) * D:].view(B, T, KV, D).transpose(1, 2)
            q = q * cos + torch.cat([q[..., half:], q[..., :half]], -1) * sin
            k = k * cos + torch.cat([k[..., half:], k[..., :half]], -1) * sin
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, enable_gqa=True)
            x = x + o.transpose(1, 2).reshape(B, T, H * D) @ wo
            g = F.rms_norm(x, (x.shape[-1],), w_post, self.eps) @ gu
            n = g.shape[-1] // 2
            x = x + (F.silu(g[..., :n]) * g[..., n:]) @ wd
        return type("Out", (), {"last_hidden_state": F.rms_norm(x, (x.shape[-1],), self.norm, self.eps)})


def fused(lm, words) -> None:
    """transformers' forward against LeanLlama on the same rows, twice each, and the largest difference."""
    import numpy as np

    model = lm.model
    lean = LeanLlama(model)
    view = type("Lean", (), {"base_model": lean, "get_output_embeddings": lambda self: model.get_output_embeddings()})()
    for _ in range(2):
        t = time.perf_counter()
        a = P.score_texts(lm, words)
        hf = time.perf_counter() - t
        lm._model = view
        t = time.perf_counter()
        b = P.score_texts(lm, words)
        mine = time.perf_counter() - t
        lm._model = model
        rel = max(float(np.nanmax(np.abs(np.array(x) - np.array(y)) / np.array(y))) for x, y in zip(a, b))
        print(f"transformers {hf:.2f} s, lean {mine:.2f} s; largest relative difference {rel:.1e}", flush=True)


if __name__ == "__main__":
    main()
