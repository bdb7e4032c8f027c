"""What the experiments layer costs and saves.

1. The store's overhead per cell: hashing the grid's cells, one transaction per finished cell (WAL,
   synchronous=FULL) with a BTU-sized report, and the `done()` lookup a rerun makes, timed over many cells.
2. The victim cache's saving on a grid: cells against victim trainings (and, where a store of that grid
   holds finished cells, the victim-training seconds measured there).

    .venv/bin/python benchmarks/bench_store.py [--cells 500] [--grid benchmarks/grids/table1-sst2.yaml]
        [--store benchmarks/results/table1-sst2.sqlite] > benchmarks/results/bench_store.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from btu.bench import Store, load_grid  # noqa: E402


def fake_report(i: int) -> dict:
    """A report the size of a BTU cell's (flagged tokens with evidence, rows, three rounds of curves)."""
    curves = {"steps": list(range(60)), "clean_mean": [0.1] * 60, "clean_p05": [0.0] * 60, "clean_p95": [0.2] * 60,
              "clean_max": [0.3] * 60, "tokens": {f"t{k}": [0.01 * k] * 60 for k in range(6)}}
    flagged = [{"token": f"t{k}", "id": k, "score": 0.5, "rows": 30, "rounds": {"1": {"rank": k, "distance": 0.4}},
                "evidence": {"purity": 0.9, "dispute": 0.5, "excess": 0.3, "z": 4.0}, "decision": "unlearn"}
               for k in range(45)]
    return {"defense": "btu", "metrics": {"cacc": 88.0 + i % 3, "asr": 10.0, "no_defense": {"cacc": 86.0}},
            "rows": [{"model": m, "cacc": 88.0, "asr": 10.0} for m in ("no defense", "unlearning only", "btu")],
            "flagged": flagged, "rounds": [{"round": r, "curves": curves} for r in (1, 2, 3)],
            "timings": {"victim_training": 120.0, "detection": 40.0}}


def store_overhead(n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "s.sqlite")
        puts = []
        for i in range(n):
            rec = {"key": f"{i:016x}", "grid": "g", "status": "done", "data": "sst2", "model": "minilm",
                   "attack": "addword", "defense": "btu", "defense_name": "btu", "seed": i % 3,
                   "config": {"options": {"alpha": 0.05}}, "metrics": fake_report(i)["metrics"],
                   "report": fake_report(i), "timings": {}, "artifacts": {}, "provenance": {"git": {}},
                   "seconds": 100.0}
            t = time.perf_counter()
            store.put(rec)
            puts.append(time.perf_counter() - t)
        t = time.perf_counter()
        done = store.done()
        lookup = time.perf_counter() - t
        size = (Path(d) / "s.sqlite").stat().st_size + sum(p.stat().st_size for p in Path(d).glob("s.sqlite-*"))
        store.close()
    assert len(done) == n
    return {"cells": n, "put_ms_median": 1000 * statistics.median(puts), "put_ms_max": 1000 * max(puts),
            "done_ms": 1000 * lookup, "bytes_per_cell": size / n}


def cache_saving(grid_path: Path, store_path: Path | None) -> dict:
    t = time.perf_counter()
    grid = load_grid(grid_path)
    keys = [c.key for c in grid.cells]
    expand = time.perf_counter() - t
    out = {"grid": grid.name, "cells": len(keys), "victims": len({c.victim_key for c in grid.cells}),
           "expand_and_hash_ms": 1000 * expand}
    if store_path is not None and store_path.is_file():
        recs = Store(store_path, create=False).records(grid=grid.name)
        trained = [r["timings"].get("victim_training") for r in recs
                   if not r["artifacts"]["victim"]["cached"] and r["timings"].get("victim_training")]
        cached = sum(1 for r in recs if r["artifacts"]["victim"]["cached"])
        out.update(stored_cells=len(recs), victims_trained=len(trained), cells_that_loaded_a_victim=cached,
                   victim_training_s_mean=statistics.fmean(trained) if trained else None,
                   cell_s_mean=statistics.fmean(r["seconds"] for r in recs) if recs else None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=500)
    ap.add_argument("--grid", type=Path, default=ROOT / "benchmarks" / "grids" / "table1-sst2.yaml")
    ap.add_argument("--store", type=Path, default=ROOT / "benchmarks" / "results" / "table1-sst2.sqlite")
    a = ap.parse_args()
    s = store_overhead(a.cells)
    print(f"store: {s['cells']} cells with a BTU-sized report: put {s['put_ms_median']:.2f} ms median "
          f"({s['put_ms_max']:.1f} ms max), done() {s['done_ms']:.1f} ms for all, "
          f"{s['bytes_per_cell'] / 1024:.1f} KiB per cell")
    c = cache_saving(a.grid, a.store)
    print(f"grid {c['grid']}: {c['cells']} cells, {c['victims']} victim trainings ({c['cells'] - c['victims']} "
          f"saved by the cache, {100 * (1 - c['victims'] / c['cells']):.0f} %); expanding and hashing it "
          f"{c['expand_and_hash_ms']:.0f} ms")
    if "stored_cells" in c:
        v, m = c["victim_training_s_mean"], c["cell_s_mean"]
        print(f"  store {a.store.name}: {c['stored_cells']} cells finished, {c['victims_trained']} victims trained, "
              f"{c['cells_that_loaded_a_victim']} cells loaded one from the cache"
              + (f"; a victim training took {v:.0f} s on average" if v else "")
              + (f", a cell {m:.0f} s" if m else "")
              + (f": the cache saved {(c['cells_that_loaded_a_victim']) * v / 60:.0f} minutes" if v else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
