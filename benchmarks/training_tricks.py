#!/usr/bin/env python
"""What two of the training loop's CPU tricks buy, measured in pairs inside one run.

  dropout   fast_dropout on vs off (TrainConfig.fast_dropout), alternating in one process on
            the same model and rows, `--reps` pairs: rows/s of each and their ratio.
  malloc    minor page faults of one short training run in a fresh process with and without
            the mallopt settings (BTU_NO_MALLOPT=1), from getrusage of the child.

Results: benchmarks/results/training_tricks.json (atomic write).
    .venv/bin/python benchmarks/training_tricks.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SST2 = HERE.parent / ".." / "shared" / "datasets" / "sst2"
CHILD = r"""
import sys
from btu.data import load_source
from btu.models import load_classifier
from btu.training import TrainConfig, train
ds = load_source(sys.argv[1], "train").subset(range(int(sys.argv[2])))
model, tok = load_classifier("minilm", label_names=ds.label_names)
train(model, tok, ds.texts, ds.labels, TrainConfig(epochs=1, precision="bf16", progress=False))
"""


def dropout_pairs(rows: int, reps: int) -> dict:
    from btu.data import load_source
    from btu.models import load_classifier
    from btu.training import TrainConfig, train

    ds = load_source(str(SST2), "train").subset(range(rows))
    model, tok = load_classifier("minilm", label_names=ds.label_names)
    out = {"fast": [], "torch": []}
    for _ in range(reps):
        for name, fast in (("fast", True), ("torch", False)):
            cfg = TrainConfig(epochs=1, precision="bf16", progress=False, fast_dropout=fast)
            out[name].append(train(model, tok, ds.texts, ds.labels, cfg).rows_per_second)
    out["ratios"] = [f / t for f, t in zip(out["fast"], out["torch"])]
    return out


def page_faults(rows: int, no_mallopt: bool) -> int:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    env = {**os.environ, "BTU_NO_MALLOPT": "1" if no_mallopt else "0"}
    subprocess.run([sys.executable, "-c", CHILD, str(SST2), str(rows)], env=env, check=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=800)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--out", type=Path, default=HERE / "results" / "training_tricks.json")
    a = p.parse_args(argv)
    if not (SST2 / "train.tsv").exists():
        print(f"SST-2 not found at {SST2}; this benchmark reads ../shared/datasets in place.")
        return 2
    from throughput import git_commit

    res = {"command": "python benchmarks/training_tricks.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "commit": git_commit(), "rows": a.rows, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "dropout_rows_per_second": dropout_pairs(a.rows, a.reps),
           "page_faults": {"mallopt": page_faults(a.rows, False), "glibc_default": page_faults(a.rows, True)}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(f".{a.out.name}.tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp, a.out)
    d = res["dropout_rows_per_second"]
    print("fast dropout / torch dropout rows/s:", ", ".join(f"{r:.2f}" for r in d["ratios"]))
    print("page faults with mallopt / glibc default:", res["page_faults"]["mallopt"], "/",
          res["page_faults"]["glibc_default"])
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
