#!/usr/bin/env python
"""What the pluggable objective costs: train() with the default objective against the loop before it.

Two worker processes, one importing btu from the pre-objective commit (a git worktree of 8da392e,
--old) and one from this checkout, each load the model and rows once; then runs alternate
old/new/old/new (`--pairs` pairs, after `--warmup` unrecorded runs each), every run one epoch from the
same pretrained weights with TrainConfig defaults (batch 32) but epochs=1. Prints rows/s of each run,
the medians and the median new/old ratio, and whether both loops gave the same losses (they should:
the default objective is bit-for-bit the old loss). Results: benchmarks/results/objective_overhead.json.

    git worktree add /tmp/btu_old 8da392e   # once; not committed
    .venv/bin/python benchmarks/objective_overhead.py
    .venv/bin/python benchmarks/objective_overhead.py --quick   # a smoke test: 64 rows, 1 pair
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEW_SRC = HERE.parent / "src"
WORKER = r"""
import copy, json, random, sys
src, model_spec, rows, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, src)
import torch
if threads:
    torch.set_num_threads(threads)
import btu
from btu.data import load_source
from btu.models import load_classifier
from btu.training import TrainConfig, train
ds = load_source("rotten-tomatoes", "train")
keep = sorted(random.Random(0).sample(range(len(ds)), min(rows, len(ds))))  # both labels (the split is sorted)
ds = ds.subset(keep)
torch.manual_seed(0)  # the new classifier head: the same in both workers
base, tok = load_classifier(model_spec, label_names=["neg", "pos"])
print(json.dumps({"ready": True, "btu": btu.__file__, "rows": len(ds)}), flush=True)
for line in sys.stdin:
    model = copy.deepcopy(base)
    res = train(model, tok, ds.texts, ds.labels, TrainConfig(epochs=1, batch_size=32, progress=False))
    print(json.dumps({"rows_per_second": res.rows_per_second, "seconds": res.seconds, "steps": res.steps,
                      "losses": res.losses}), flush=True)
"""


class Worker:
    def __init__(self, name, src: Path, model: str, rows: int, threads: int):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(src), model, str(rows), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": ""})
        self.info = self._reply()
        if not self.info["btu"].startswith(str(src)):  # the worker must run the code it is named after
            raise SystemExit(f"{name}: imported btu from {self.info['btu']}, not {src}")

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} worker exited ({self.proc.wait()})")
        return json.loads(line)

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", type=Path, default=Path("/tmp/btu_old/src"), help="src/ of the pre-objective code")
    p.add_argument("--model", default="minilm")
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="64 rows, 1 pair, no warmup, nothing written")
    p.add_argument("--out", type=Path, default=HERE / "results" / "objective_overhead.json")
    a = p.parse_args(argv)
    if a.quick:
        a.rows, a.pairs, a.warmup = 64, 1, 0
    if not (a.old / "btu" / "training" / "loop.py").exists():
        print(f"no old code at {a.old}; make it with: git worktree add {a.old.parent} 8da392e")
        return 2
    workers = {"old": Worker("old", a.old.resolve(), a.model, a.rows, a.threads),
               "new": Worker("new", NEW_SRC.resolve(), a.model, a.rows, a.threads)}
    runs = {"old": [], "new": []}
    try:
        for _ in range(a.warmup):
            for w in workers.values():
                w.run()
        for i in range(a.pairs):
            for name in ("old", "new"):
                runs[name].append(workers[name].run())
                print(f"pair {i + 1} {name}: {runs[name][-1]['rows_per_second']:.1f} rows/s", flush=True)
    finally:
        for w in workers.values():
            w.close()
    rps = {k: [r["rows_per_second"] for r in v] for k, v in runs.items()}
    ratios = [n / o for n, o in zip(rps["new"], rps["old"])]
    same = all(o["losses"] == n["losses"] for o, n in zip(runs["old"], runs["new"]))
    res = {"command": "python benchmarks/objective_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": a.model, "rows": workers["new"].info["rows"],
           "steps": runs["new"][0]["steps"], "threads": a.threads or "default", "rows_per_second": rps,
           "median_rows_per_second": {k: statistics.median(v) for k, v in rps.items()},
           "new_over_old": ratios, "median_new_over_old": statistics.median(ratios), "same_losses": same}
    m = res["median_rows_per_second"]
    print(f"median rows/s: old {m['old']:.1f}, new {m['new']:.1f}; new/old {res['median_new_over_old']:.3f} "
          f"(pairs: {', '.join(f'{r:.3f}' for r in ratios)}); same losses: {same}")
    if not a.quick:
        sys.path.insert(0, str(HERE))
        from throughput import git_commit

        res["commit"] = git_commit()
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_name(f".{a.out.name}.tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        os.replace(tmp, a.out)
        print(f"wrote {a.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
