"""Where ONION's scoring time goes, and what two changes to it buy, on 40 seeded SST-2 training rows.

    .venv/bin/python benchmarks/onion_profile.py profile      # torch.profiler's top operators over one scoring
    .venv/bin/python benchmarks/onion_profile.py head-chunk   # the LM head's chunk size: 2,048 / 512 / 256, twice
    .venv/bin/python benchmarks/onion_profile.py compile      # eager against torch.compile(dynamic=True)

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
    if mode not in ("profile", "head-chunk", "compile"):
        sys.exit(f"unknown mode {mode!r}: profile, head-chunk or compile")
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


if __name__ == "__main__":
    main()
