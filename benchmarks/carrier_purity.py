"""How target-pure the rows of each flagged token are (the numbers behind `--carrier-purity`).

For the seed-0 `retrain, agree+crossfit` cells of `results/btu_repair_sets.jsonl` (SynBkd,
StyleBkd, AddWord) and, with --demo-report, a `btu demo --quick --recipe retrain --out DIR`
report: each rare flagged token's rows (at most 15 % of the rows), the share of them labelled
as the target, how many are poisoned, and z = (target rows - rows x base rate) / binomial sd.
No training: the poisoned sets are rebuilt with the benchmark's attacks and seeds.

    .venv/bin/python benchmarks/carrier_purity.py --demo-report runs/demo-quick-retrain/report.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent / ".." / "shared" / "datasets"
ATTACK_DATA = {"synbkd": "sst2-syn", "stylebkd": "sst2-style", "addword": "sst2"}
VARIANT = "retrain, agree+crossfit"


def token_stats(tok, texts, labels, poisoned, tokens, target, max_share=0.15) -> tuple[float, list[dict]]:
    """The base rate of `target`, and each rare token's rows: their target share, poisoned count and z."""
    from btu.training.batching import encode

    ids = [set(r) for r in encode(tok, texts)]
    base = sum(y == target for y in labels) / len(labels)
    out = []
    for t in tokens:
        tid = tok.convert_tokens_to_ids(t)
        rows = [i for i, r in enumerate(ids) if tid in r]
        if not rows or len(rows) > max_share * len(ids):
            continue
        k, m = sum(labels[i] == target for i in rows), len(rows)
        out.append({"token": t, "rows": m, "target_share": k / m, "poisoned": sum(bool(poisoned[i]) for i in rows),
                    "z": (k - m * base) / math.sqrt(m * base * (1 - base))})
    return base, out


def show(name, base, stats):
    print(f"== {name}: base rate {base:.3f}")
    for s in stats:
        print(f"  {s['token']:12s} rows {s['rows']:5d} target {s['target_share']:.2f} "
              f"poisoned {s['poisoned']:4d} z {s['z']:6.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(HERE / "results" / "btu_repair_sets.jsonl"))
    p.add_argument("--demo-report", help="report.json of `btu demo --quick --recipe retrain --out DIR`")
    a = p.parse_args()
    if not (SHARED / "sst2" / "train.tsv").exists():
        print(f"SST-2 not found at {SHARED / 'sst2'}; this benchmark reads ../shared/datasets in place.")
        return
    from btu.attacks import make_attack
    from btu.data import load_source
    from btu.models import load_classifier

    _, tok = load_classifier("minilm", label_names=["0", "1"])
    rows = [json.loads(line) for line in open(a.results)]
    for attack, folder in ATTACK_DATA.items():
        cell = next(r for r in rows if r["attack"] == attack and r["seed"] == 0 and r["variant"] == VARIANT)
        ds = make_attack(attack, rate=0.1, target=1).poison_train(load_source(str(SHARED / folder), "train"), 0)
        show(attack, *token_stats(tok, ds.texts, ds.labels, ds.poisoned, [f[0] for f in cell["flagged"]], 1))
    if a.demo_report:
        from btu.experiment import AttackConfig, DataConfig, apply_attack, load_splits

        report = json.loads(Path(a.demo_report).read_text())
        splits = load_splits(DataConfig(train="rotten-tomatoes", limit=1500), 0)
        splits, _ = apply_attack(splits, AttackConfig(name="addword"), 0, tok, 128)  # 128: encode's default
        train = splits.train
        show("demo --quick", *token_stats(tok, train.texts, train.labels, train.poisoned,
                                          [f["token"] for f in report["flagged"]], splits.target))


if __name__ == "__main__":
    main()
