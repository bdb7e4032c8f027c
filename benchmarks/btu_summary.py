"""Tables from benchmarks/results/btu_table.jsonl: Table 1 (mean and std over seeds), the
ablations, trigger ranks and detection cost."""

from __future__ import annotations

import statistics
from collections import defaultdict

CLEAN = "clean model"
VICTIM_LR = 2e-5  # the victims' lr in rows without "victim_lr" (every results file before session 5)
ROWS = [("no defense", "none"), ("unlearning only", "unlearn"), ("BTU (unlearning + repair)", "BTU"),
        ("repair only (no unlearning)", "repair")]


def _ms(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _paired_means(main, abl) -> list[str]:
    """Variants run on more than one seed: mean CACC / ASR against BTU's on the same (attack, seed) cells."""
    base = {(r["attack"], r["seed"]): r["rows"]["BTU (unlearning + repair)"] for r in main}
    groups = defaultdict(list)
    for r in abl:
        if (r["attack"], r["seed"]) in base:
            groups[(r["variant"], r["attack"])].append(r)
    multi = {k: v for k, v in groups.items() if len(v) > 1}
    if not multi:
        return []
    out = ["", "### Variants over several seeds: mean against the BTU rows (the defaults of their run) on the "
           "same seeds", "",
           "| variant | attack | seeds | BTU CACC | variant CACC | BTU ASR | variant ASR |",
           "|---|---|---|---:|---:|---:|---:|"]
    for (variant, attack), rs in sorted(multi.items()):
        seeds = sorted(r["seed"] for r in rs)
        b = [base[(attack, s)] for s in seeds]
        v = [r["rows"]["BTU (unlearning + repair)"] for r in sorted(rs, key=lambda r: r["seed"])]
        out.append(f"| {variant} | {attack} | {','.join(map(str, seeds))} | "
                   f"{statistics.mean(x['cacc'] for x in b):.2f} | {statistics.mean(x['cacc'] for x in v):.2f} | "
                   f"{statistics.mean(x['asr'] for x in b):.2f} | {statistics.mean(x['asr'] for x in v):.2f} |")
    return out


def _clean_reference(main, clean) -> list[str]:
    """The model trained on unpoisoned data beside no defense and BTU, on the same seeds."""
    if not clean:
        return []
    out = ["", "## A model that never saw poison (clean reference), mean over seeds", "",
           "| attack | seeds | clean CACC | clean ASR | clean ASR without trigger | no defense CACC | BTU CACC | "
           "BTU ASR | BTU ASR without trigger |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_cell = {(r["attack"], r["seed"]): r for r in main}
    groups = defaultdict(list)
    for r in clean:
        groups[r["attack"]].append(r)
    for attack, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        b = [by_cell[(attack, r["seed"])]["rows"] for r in rs if (attack, r["seed"]) in by_cell]
        c = [r["rows"][CLEAN] for r in rs]
        out.append(f"| {attack} | {','.join(str(r['seed']) for r in rs)} | "
                   + " | ".join(_ms([x.get(k) for x in c]) for k in ("cacc", "asr", "asr_no_trigger")) + " | "
                   + " | ".join(_ms([x.get(row, {}).get(k) for x in b]) for row, k in (
                       ("no defense", "cacc"), (ROWS[2][0], "cacc"), (ROWS[2][0], "asr"),
                       (ROWS[2][0], "asr_no_trigger"))) + " |")
    lrs = ", ".join(f"{lr:g}" for lr in sorted({r.get("victim_lr", VICTIM_LR) for r in clean}))
    out += ["", f"The clean model is trained like the victims (same epochs, batch 32, lr {lrs}, same seed and head "
            "initialisation) on the training set without poison. Its ASR is what the trigger alone does to a "
            "model without a backdoor: what a perfect defense would score with this model.", ""]
    return out


def _dev_cacc(results) -> list[str]:
    """Dev CACC (SST-2 dev; the split that chooses) of no defense and of the defended model, where measured."""
    groups = defaultdict(list)
    for r in results:
        if r["rows"].get("BTU (unlearning + repair)", {}).get("dev_cacc") is not None:
            groups[(r["variant"], r["attack"])].append(r)
    if not groups:
        return []
    out = ["", "## Dev CACC (SST-2 dev, 872 rows: the split that chooses), mean over seeds", "",
           "| variant | attack | seeds | no defense dev CACC | defended dev CACC | defended test CACC |",
           "|---|---|---|---:|---:|---:|"]
    for (variant, attack), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        out.append(f"| {variant} | {attack} | {','.join(str(r['seed']) for r in rs)} | "
                   f"{_ms([r['rows']['no defense']['dev_cacc'] for r in rs])} | "
                   f"{_ms([r['rows']['BTU (unlearning + repair)']['dev_cacc'] for r in rs])} | "
                   f"{_ms([r['rows']['BTU (unlearning + repair)']['cacc'] for r in rs])} |")
    return out


def summarize(results: list[dict]) -> str:
    out = []
    main = [r for r in results if r["variant"] == "BTU"]
    by_attack = defaultdict(list)
    for r in main:
        by_attack[r["attack"]].append(r)
    out += ["## Table 1: SST-2, MiniLM, 10 % poison (CACC / ASR, mean ± std over seeds)", "",
            "| attack | seeds | " + " | ".join(f"{short} CACC | {short} ASR" for _, short in ROWS)
            + " | BTU ASR without trigger |",
            "|---|---|" + "---:|---:|" * len(ROWS) + "---:|"]
    for attack, rs in by_attack.items():
        cells = []
        for key, _ in ROWS:
            cells.append(_ms([x["rows"].get(key, {}).get("cacc") for x in rs]))
            cells.append(_ms([x["rows"].get(key, {}).get("asr") for x in rs]))
        cells.append(_ms([x["rows"].get(ROWS[2][0], {}).get("asr_no_trigger") for x in rs]))
        out.append(f"| {attack} | {','.join(str(x['seed']) for x in rs)} | " + " | ".join(cells) + " |")
    out += ["", "none = no defense, unlearn = unlearning only, BTU = unlearning + repair, "
            "repair = repair only without unlearning (the control). *ASR without trigger*: the ASR rows "
            "without their trigger, predicted as the target by the BTU model: the floor that a model "
            "without any backdoor shows.", ""]

    out += ["## Trigger tokens: rank among the flagged tokens per round (- = not flagged)", "",
            "| attack | seed | token | round 1 | round 2 | round 3 |", "|---|---|---|---|---|---|"]
    for r in main:
        for tok, ranks in r.get("trigger_ranks", {}).items():
            cells = []
            for n in (1, 2, 3):
                v = ranks.get(f"round{n}")
                cells.append("n/a" if v is None else f"{v['flagged_rank'] or '-'} (vocab #{v['vocab_rank']})")
            out.append(f"| {r['attack']} | {r['seed']} | {tok} | " + " | ".join(cells) + " |")
    out += ["", "## Flagged rows against the ground truth", "",
            "| attack | seed | flagged tokens | tokens counted (in at most this share of rows) | rows with a "
            "flagged token | precision % | recall % |",
            "|---|---|---:|---|---:|---:|---:|"]
    for r in main:
        fr = r["flagged_rows"]
        share = fr.get("max_share", 1.0)
        out.append(f"| {r['attack']} | {r['seed']} | {len(r['flagged'])} | {share:.0%} | {fr['flagged_rows']} | "
                   f"{fr.get('precision', float('nan')):.1f} | {fr.get('recall', float('nan')):.1f} |")

    out += _clean_reference(main, [r for r in results if r["variant"] == CLEAN])
    abl = [r for r in results if r["variant"] not in ("BTU", CLEAN)]
    if abl:
        out += ["", "## Ablations (CACC / ASR after unlearning + repair, and after unlearning only)", "",
                "| attack | seed | variant | BTU CACC | BTU ASR | BTU ASR without trigger | "
                "unlearn-only CACC | unlearn-only ASR | flagged tokens | repair rows |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        cells = {(r["attack"], r["seed"]) for r in abl}
        shown = abl + [b for b in main if (b["attack"], b["seed"]) in cells]
        for r in sorted(shown, key=lambda x: (x["attack"], x["seed"], x["variant"] != "BTU", x["variant"])):
            b, u = r["rows"]["BTU (unlearning + repair)"], r["rows"]["unlearning only"]
            floor = b.get("asr_no_trigger")
            out.append(f"| {r['attack']} | {r['seed']} | {r['variant']} | {b['cacc']:.2f} | {b['asr']:.2f} | "
                       f"{'-' if floor is None else f'{floor:.2f}'} | {u['cacc']:.2f} | "
                       f"{u['asr']:.2f} | {len(r['flagged'])} | {r['repair']['rows']} |")
        out += _paired_means(main, abl)
    out += _dev_cacc(results)

    out += ["", "## Cost (seconds, same run)", "",
            "| attack | seed | victim epoch | detection | detection / epoch | rounds 1/2/3 | BTU after victim "
            "(unlearn + repair + control + evals) | whole defend / plain fine-tuning |",
            "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in main:
        s = r["seconds"]
        rounds = "/".join(f"{v:.0f}" for v in s["detection_rounds"].values())
        whole = s["victim_training"] + s["detection"] + s["defend_after_victim"]
        out.append(f"| {r['attack']} | {r['seed']} | {s['victim_epoch']:.0f} | {s['detection']:.0f} | "
                   f"{s['detection'] / s['victim_epoch']:.2f} | {rounds} | {s['defend_after_victim']:.0f} | "
                   f"{whole / s['victim_training']:.2f} |")
    return "\n".join(out) + "\n"
