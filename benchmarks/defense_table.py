"""Any registered defense on SST-2 (MiniLM, 10 % poison), through the runner, as `btu defend --defense NAME` runs it.

Victims come from btu_table.py's cache (the same folders, trained and cached here when absent), so every defense
is compared with the same no-defense model. Each (defense, preset, options, attack, seed) cell is appended to a
JSON-lines file as soon as it finishes; a rerun skips finished cells. SST-2 dev is the dev set of the addword and
addsent cells (never of synbkd and stylebkd, whose ASR rows are paraphrases of it).

    .venv/bin/python benchmarks/defense_table.py --defense btu-detect --seeds 0 1 2
    .venv/bin/python benchmarks/defense_table.py --defense btu --preset retrain --set fresh_lr=2e-5 --seeds 0
    .venv/bin/python benchmarks/defense_table.py --summary
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
from btu_table import (  # noqa: E402
    ASR_FROM_DEV,
    ATTACK_DATA,
    SHARED,
    append_result,
    cached_training,
    poisoned_cell,
    read_results,
    victim_dir,
)


def cell(defense, preset, options, attack, seed) -> tuple:
    return defense, preset, json.dumps(options, sort_keys=True), attack, seed


def summarize(rows: list[dict]) -> str:
    """Mean over seeds of each (defense, preset, options, attack): defended and no-defense CACC / ASR, the filter's
    precision and recall, dev CACC."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["defense"], r["preset"], json.dumps(r["options_set"], sort_keys=True), r["attack"])].append(r)

    def mean(values):
        values = [v for v in values if v is not None]
        return f"{statistics.mean(values):.2f}" if values else "-"

    out = ["| defense | preset | --set | attack | seeds | CACC | ASR | ASR without trigger | no defense CACC | "
           "no defense ASR | removed rows | filter precision | filter recall | dev CACC |",
           "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (defense, preset, opts, attack), rs in sorted(groups.items()):
        m = [r["metrics"] for r in rs]
        f = [x.get("filter") or {} for x in m]
        out.append(f"| {defense} | {preset or '-'} | {opts if opts != '{}' else '-'} | {attack} | "
                   f"{','.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))} | "
                   f"{mean(x['cacc'] for x in m)} | {mean(x['asr'] for x in m)} | "
                   f"{mean(x['asr_no_trigger'] for x in m)} | "
                   f"{mean(x['no_defense']['cacc'] for x in m)} | {mean(x['no_defense']['asr'] for x in m)} | "
                   f"{mean(x.get('removed') for x in f)} | {mean(x.get('precision') for x in f)} | "
                   f"{mean(x.get('recall') for x in f)} | {mean(x.get('dev_cacc') for x in m)} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--defense", default="btu-detect")
    p.add_argument("--preset", help="the defense's preset (default: its default)")
    p.add_argument("--set", dest="set_values", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--attacks", nargs="+", default=list(ATTACK_DATA), choices=list(ATTACK_DATA))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--model", default="minilm")
    p.add_argument("--results", default=str(HERE / "results" / "defense_table.jsonl"))
    p.add_argument("--cache", default=str(HERE / "cache"), help="btu_table.py's victim cache")
    p.add_argument("--summary", action="store_true", help="only print the table from the results file")
    a = p.parse_args(argv)
    results = Path(a.results)
    if a.summary:
        print(summarize(read_results(results)))
        return 0
    if not (SHARED / "sst2" / "train.tsv").exists():
        print(f"SST-2 not found at {SHARED / 'sst2'}; this benchmark reads ../shared/datasets in place.")
        return 2
    from throughput import git_commit

    from btu.data import load_source
    from btu.defenses import RunSettings, get_defense, run_defense
    from btu.defenses.options import build_options, parse_set, to_dict
    from btu.models import load_classifier
    from btu.training import seed_everything
    from btu.training.batching import encode

    cls = get_defense(a.defense)
    preset = a.preset or cls.default_preset
    set_values = parse_set(a.set_values)
    options = build_options(cls.Options, cls.presets.get(preset) if preset else None, None, set_values)
    commit = git_commit()
    done = {cell(r["defense"], r["preset"], r["options_set"], r["attack"], r["seed"]) for r in read_results(results)}
    test = load_source(str(SHARED / "sst2"), "test")
    dev_set = load_source(str(SHARED / "sst2"), "dev")
    for seed in a.seeds:
        for name in a.attacks:
            if cell(a.defense, preset, set_values, name, seed) in done:
                continue
            train_ds, _, ptrain, ptest = poisoned_cell(name, seed, test)
            vdir = victim_dir(a.cache, a.model, name, seed)
            if not (vdir / "config.json").exists():
                seed_everything(seed)  # the new head's initialisation, as btu_table.py trains it
                base, tok = load_classifier(a.model, label_names=train_ds.label_names)
                cached_training(vdir, base, tok, encode(tok, ptrain.texts), ptrain.labels, 3.0, VICTIM_LR, seed,
                                f"victim {name} seed {seed}")
            start = time.perf_counter()
            res = run_defense(a.defense, ptrain, a.model, options=options, preset=preset,
                              settings=RunSettings(epochs=3.0, lr=VICTIM_LR, seed=seed, progress=sys.stderr.isatty()),
                              dev=None if name in ASR_FROM_DEV else dev_set, test=test, poison_test=ptest, target=1,
                              victim=str(vdir))
            rep = res.report
            row = {"defense": a.defense, "preset": preset, "options_set": set_values, "attack": name, "seed": seed,
                   "model": a.model, "metrics": rep["metrics"], "rows": rep["rows"], "timings": rep["timings"],
                   "seconds": time.perf_counter() - start, "options": to_dict(res.options),
                   "flagged": [[f["token"], f["rows"], f["poisoned_rows"]] for f in rep.get("flagged", [])],
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit}
            append_result(results, row)
            m = rep["metrics"]
            print(f"{a.defense} {name} seed {seed}: {m['cacc']:.2f} / {m['asr']:.2f} (no defense "
                  f"{m['no_defense']['cacc']:.2f} / {m['no_defense']['asr']:.2f})", flush=True)
    print(summarize(read_results(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
