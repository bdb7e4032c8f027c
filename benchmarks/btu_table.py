"""BTU on SST-2 with MiniLM at 10 % poison: the paper's Table 1 (no defense vs BTU, with the
unlearning-only and repair-only controls), the ablations of Tables 4-6, and detection cost.

Each (attack, seed, variant) cell is appended to a JSON-lines results file as soon as it
finishes; a rerun skips finished cells. Victims (the expensive part) are cached as model
folders under --cache, so a restarted run also skips their training.

    .venv/bin/python benchmarks/btu_table.py                      # Table 1, seeds 0-2
    .venv/bin/python benchmarks/btu_table.py --seeds 0 --ablations ours
    .venv/bin/python benchmarks/btu_table.py --seeds 0 --attacks addsent synbkd --ablations table4 table5 table6 \
        --results benchmarks/results/btu_ablations.jsonl   # Tables 4-6, with their own BTU row
    .venv/bin/python benchmarks/btu_table.py --seeds 0 --attacks addword --victim-lr 1e-4 --clean-model \
        --results benchmarks/results/btu_table_lr1e-4.jsonl   # stronger victims (and clean model) at lr 1e-4
    .venv/bin/python benchmarks/btu_table.py --summary            # print the tables from the results
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from btu_summary import CLEAN, VICTIM_LR

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent / ".." / "shared" / "datasets"
ATTACK_DATA = {"addword": "sst2", "addsent": "sst2", "synbkd": "sst2-syn", "stylebkd": "sst2-style"}
ABLATIONS = {
    # name: list of (variant name, BTUConfig overrides)
    "table4": [("alpha=0.03", {"alpha": 0.03}), ("alpha=0.10", {"alpha": 0.10})],
    "table5": [("PN", {"unlearn": "pn"}), ("PR-1", {"unlearn": "pr1"}), ("PR-2", {"unlearn": "pr2"})],
    "table6": [("rounds=1", {"rounds": [1]}), ("rounds=2", {"rounds": [2]}), ("rounds=2+3", {"rounds": [2, 3]}),
               ("rounds=1+2", {"rounds": [1, 2]})],
    # the paper's threshold, and our additions
    "ours": [("threshold=mean", {"threshold": "mean"}),
             ("unlearn-max-rows=0.15", {"unlearn_token_max_rows": 0.15}),
             ("score=relative", {"score": "relative"}),
             ("repair=sst2-dev", {"clean_data": "dev"}),
             ("repair-filter=agree", {"repair_filter": "agree"})],
    "repair2": [("repair-epochs=2", {"repair_epochs": 2.0})],
    "rounds12": [("rounds=1+2", {"rounds": [1, 2]})],  # Table 6's best CACC on addsent seed 0, over seeds
    "maxrows": [("unlearn-max-rows=0.15", {"unlearn_token_max_rows": 0.15})],  # +0.7 CACC on seed 0, over seeds
    # repair distilling the victim's logits on the repair rows (no trigger there), for CACC
    "teacher": [("repair-teacher=victim", {"repair_teacher": "victim"}),
                ("repair-teacher=victim,w=1", {"repair_teacher": "victim", "repair_distill_weight": 1.0})],
    "repairlr": [("repair-lr=5e-5", {"repair_lr": 5e-5})],
    "repairlr1e-4": [("repair-lr=1e-4", {"repair_lr": 1e-4})],  # the lr of the --victim-lr 1e-4 victims
    "embedlr": [("repair-embedding-lr=1e-3", {"repair_embedding_lr": 1e-3}),
                ("repair-embedding-lr=2e-4", {"repair_embedding_lr": 2e-4}),
                ("repair embeddings only, lr 1e-3", {"repair_trainable": "embeddings", "repair_lr": 1e-3})],
    "filter": [("repair-filter=repaired", {"repair_filter": "repaired"}),
               ("repair-filter=repaired, embedding lr 1e-3",
                {"repair_filter": "repaired", "repair_embedding_lr": 1e-3})],
    "relative": [("score=relative", {"score": "relative"})],
    # the flagged tokens' clean carriers (sentiment words) back in the repair, without those tokens
    "readmit": [("repair-carriers=readmit", {"repair_carriers": "readmit"})],
    # paraphrase poison judged out of fold before the repair (crossfit2: two passes)
    "crossfit": [("repair-filter=crossfit", {"repair_filter": "crossfit"})],
    # the ceiling of any repair filter: the default repair set minus its ground-truth poisoned rows
    "oracle": [("repair=oracle", {"clean_data": "oracle"})],
    # is what the oracle leaves a bias that a longer repair undoes?
    "oracle3": [("repair=oracle, 3 epochs", {"clean_data": "oracle", "repair_epochs": 3.0})],
    "agree": [("repair-filter=agree", {"repair_filter": "agree"})],
    "dev": [("repair=sst2-dev", {"clean_data": "dev"})],  # the paper's protocol: a small outside clean set
    # an outside clean set for every attack: Rotten Tomatoes critic snippets that share no sentence with SST-2 dev/test
    "rt": [("repair=rotten-tomatoes", {"clean_data": "rt"})],
    "crossfit2": [("repair-filter=crossfit, 2 passes", {"repair_filter": "crossfit", "repair_filter_passes": 2})],
    # a fresh copy of the pretrained model trained on the repair set (BTU's detection as a data sanitizer)
    "fresh": [("repair-from=pretrained", {"repair_from": "pretrained"}),
              ("repair-from=pretrained, crossfit", {"repair_from": "pretrained", "repair_filter": "crossfit"}),
              ("repair-from=pretrained, agree", {"repair_from": "pretrained", "repair_filter": "agree"})],
    "fresh-oracle": [("repair=oracle, from pretrained", {"clean_data": "oracle", "repair_from": "pretrained"})],
}
ABLATIONS["fresh-plain"] = ABLATIONS["fresh"][:1]
ABLATIONS["fresh-crossfit"] = ABLATIONS["fresh"][1:2]
ABLATIONS["fresh-agree"] = ABLATIONS["fresh"][2:]
# with --victim-lr 1e-4: the fresh model trained at 2e-5 (cfg.lr only trains the fresh model when the victim is given)
ABLATIONS["fresh-agree-lr2e-5"] = [("repair-from=pretrained at lr 2e-5, agree",
                                    {"repair_from": "pretrained", "repair_filter": "agree", "lr": 2e-5})]
# on the lr 2e-5 victims: the fresh model trained at 1e-4 (a better learner: the clean model gains 1.1 CACC)
ABLATIONS["fresh-lr1e-4"] = [("repair-from=pretrained at lr 1e-4", {"repair_from": "pretrained", "lr": 1e-4})]
# the relative score flags fewer sentiment words: a larger repair set for the fresh model
ABLATIONS["fresh-lr1e-4-relative"] = [("repair-from=pretrained at lr 1e-4, score=relative",
                                       {"repair_from": "pretrained", "lr": 1e-4, "score": "relative"})]
# every label weighing the same in the repair (the poison took non-target rows away), with BTU's repair and with
# the best fresh recipes of each trigger kind
BAL = {"repair_balance": "balanced"}
ABLATIONS["balanced"] = [("repair-balance=balanced", BAL)]
ABLATIONS["fresh-balanced"] = [("repair-from=pretrained at lr 1e-4, score=relative, balanced",
                                {**ABLATIONS["fresh-lr1e-4-relative"][0][1], **BAL})]
ABLATIONS["fresh-agree-balanced"] = [("repair-from=pretrained, agree, balanced",
                                      {**ABLATIONS["fresh-agree"][0][1], **BAL})]
# the filters drop only rows of the suspected target label (the poison's label): the other labels' hard rows stay
TGT = {"repair_filter_labels": "target"}
ABLATIONS["fresh-agree-target"] = [("repair-from=pretrained, agree, target label only",
                                    {**ABLATIONS["fresh-agree"][0][1], **TGT}),
                                   ("repair-from=pretrained, agree, target label only, balanced",
                                    {**ABLATIONS["fresh-agree"][0][1], **TGT, **BAL})]
ABLATIONS["fresh-agree-target-only"] = ABLATIONS["fresh-agree-target"][:1]
ABLATIONS["crossfit-target"] = [("repair-filter=crossfit, target label only", {"repair_filter": "crossfit", **TGT}),
                                 ("repair-filter=crossfit, target label only, balanced",
                                  {"repair_filter": "crossfit", **TGT, **BAL})]
ABLATIONS["judges-target"] = [("repair-from=pretrained, crossfit, fresh judges, target label only",
                               {"repair_from": "pretrained", "repair_filter": "crossfit",
                                "repair_filter_judge": "pretrained", **TGT})]
# the carriers of a flagged token whose label is not the suspected target stay in the repair set
OTHER = {"repair_carriers": "other-labels"}
ABLATIONS["other-labels"] = [("repair-carriers=other-labels", OTHER)]
ABLATIONS["fresh-other"] = [("repair-from=pretrained at lr 1e-4, score=relative, other-labels",
                             {**ABLATIONS["fresh-lr1e-4-relative"][0][1], **OTHER})]
ABLATIONS["fresh-other-stripped"] = [("repair-from=pretrained at lr 1e-4, score=relative, other-labels-stripped",
                                      {**ABLATIONS["fresh-lr1e-4-relative"][0][1],
                                       "repair_carriers": "other-labels-stripped"})]
ABLATIONS["fresh-agree-other"] = [("repair-from=pretrained, agree, target label only, other-labels",
                                   {**ABLATIONS["fresh-agree"][0][1], **TGT, **OTHER})]
# the same, each label weighing the same (the set now leans to the other labels: does the ASR come from that?)
ABLATIONS["fresh-agree-other-balanced"] = [("repair-from=pretrained, agree, target label only, other-labels, balanced",
                                            {**ABLATIONS["fresh-agree-other"][0][1], **BAL})]
ABLATIONS["crossfit-other"] = [("repair-filter=crossfit, target label only, other-labels",
                                {"repair_filter": "crossfit", **TGT, **OTHER})]
ABLATIONS["fresh-crossfit-other"] = [("repair-from=pretrained, crossfit, target label only, other-labels",
                                      {"repair_from": "pretrained", "repair_filter": "crossfit", **TGT, **OTHER})]
ABLATIONS["fresh-crossfit-other-balanced"] = [
    ("repair-from=pretrained, crossfit, target label only, other-labels, balanced",
     {**ABLATIONS["fresh-crossfit-other"][0][1], **BAL})]
ABLATIONS["fresh-crossfit-other-lr1e-4"] = [
    ("repair-from=pretrained at lr 1e-4, crossfit, target label only, other-labels",
     {**ABLATIONS["fresh-crossfit-other"][0][1], "lr": 1e-4})]
# the other labels' carriers without their flagged tokens, on the paraphrase recipes: keeps the rows, drops the
# token lessons (`when` → non-target, `wonderful` → non-target) that cost CACC on the token triggers
STRIP = {"repair_carriers": "other-labels-stripped"}
ABLATIONS["fresh-crossfit-stripped"] = [("repair-from=pretrained, crossfit, target label only, other-labels-stripped",
                                         {"repair_from": "pretrained", "repair_filter": "crossfit", **TGT, **STRIP})]
ABLATIONS["fresh-crossfit-stripped-lr1e-4"] = [
    ("repair-from=pretrained at lr 1e-4, crossfit, target label only, other-labels-stripped",
     {**ABLATIONS["fresh-crossfit-stripped"][0][1], "lr": 1e-4})]
ABLATIONS["fresh-crossfit-stripped-balanced"] = [
    ("repair-from=pretrained, crossfit, target label only, other-labels-stripped, balanced",
     {**ABLATIONS["fresh-crossfit-stripped"][0][1], **BAL})]
ABLATIONS["fresh-crossfit-stripped-lr1e-4-balanced"] = [
    ("repair-from=pretrained at lr 1e-4, crossfit, target label only, other-labels-stripped, balanced",
     {**ABLATIONS["fresh-crossfit-stripped"][0][1], "lr": 1e-4, **BAL})]
ABLATIONS["fresh-crossfit-stripped-lr1e-4-both"] = [
    ("repair-from=pretrained at lr 1e-4, crossfit, both judges, target label only, other-labels-stripped",
     {**ABLATIONS["fresh-crossfit-stripped-lr1e-4"][0][1], "repair_filter_judge": "both"})]
ABLATIONS["fresh-agree-stripped-balanced"] = [
    ("repair-from=pretrained, agree, target label only, other-labels-stripped, balanced",
     {**ABLATIONS["fresh-agree"][0][1], **TGT, **STRIP, **BAL})]
# session 9: the retrain recipe with `agree` before `crossfit` (agree catches syntax poison in-sample, crossfit what
# is left and the style poison): the recipe as it now stands
ABLATIONS["retrain-agree"] = [
    ("retrain, agree+crossfit",
     {**ABLATIONS["fresh-crossfit-stripped-lr1e-4"][0][1], "repair_filter": "agree+crossfit"})]
# ... keeping the target rows whose flagged tokens are at the base rate (`film`), which small sets cannot spare
ABLATIONS["retrain-pure"] = [
    ("retrain, agree+crossfit, carrier purity 0.9", {**ABLATIONS["retrain-agree"][0][1], "repair_carrier_purity": 0.9})]
# crossfit's judges trained fresh (blind to syntax poison the unlearned victim still carries), or both kinds
ABLATIONS["judges"] = [
    ("repair-from=pretrained, crossfit, fresh judges",
     {"repair_from": "pretrained", "repair_filter": "crossfit", "repair_filter_judge": "pretrained"}),
    ("repair-from=pretrained, crossfit, both judges",
     {"repair_from": "pretrained", "repair_filter": "crossfit", "repair_filter_judge": "both"}),
    ("repair-filter=crossfit, both judges", {"repair_filter": "crossfit", "repair_filter_judge": "both"})]
# the two repair changes that gained CACC on seed 0 (addsent, stylebkd, synbkd), to run over seeds
ABLATIONS |= {
    "repairfix": [ABLATIONS["embedlr"][0], ABLATIONS["filter"][1]],
    # the default before the embedding lr 1e-3 became one: the embeddings repaired at repair_lr
    "embedlr-off": [("repair-embedding-lr=repair-lr", {"repair_embedding_lr": None})],
}
ABLATIONS["threshold"] = ABLATIONS["score"] = ABLATIONS["ours"]  # the names of an earlier run
ABLATION_ATTACKS = ("addword", "addsent", "synbkd")
# their ASR rows are SST-2 dev's paraphrased negatives, so repairing on SST-2 dev would train on them
ASR_FROM_DEV = ("synbkd", "stylebkd")


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def trigger_token_ids(tok, attack) -> list[int]:
    if attack.name == "addword":
        words = attack.triggers
    elif attack.name == "addsent":
        words = attack.sentence.split()
    else:
        return []
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    return sorted(set(ids))


def trigger_ranks(det, tok, trig_ids) -> dict:
    out = {}
    for t in trig_ids:
        ranks = {}
        for r in det.rounds:
            order = {tid: i + 1 for i, (tid, _) in enumerate(r.flagged)}
            full_rank = int((r.distances > r.distances[t]).sum()) + 1  # rank in the whole vocabulary
            ranks[f"round{r.round}"] = {"flagged_rank": order.get(t), "vocab_rank": full_rank}
        out[tok.convert_ids_to_tokens(t)] = ranks
    return out


def victim_tag(a) -> str:
    """The victim recipe in cache folder names: `epochs3`, or `epochs3-lr0.0001` for another lr."""
    return f"epochs{a.victim_epochs:g}" + ("" if a.victim_lr == VICTIM_LR else f"-lr{a.victim_lr:g}")


def cell_key(row: dict) -> tuple:
    """What identifies a results row: a rerun skips the cells whose key is already in the file."""
    return row["attack"], row["seed"], row["variant"], row["victim_epochs"], row.get("victim_lr", VICTIM_LR)


def defended_key(name: str) -> str:
    """The defended model's row under one key, whatever the preset calls it (retrain: a fresh model)."""
    return "BTU (unlearning + repair)" if name.startswith("BTU (") else name


def poisoned_cell(name: str, seed: int, test, limit: int | None = None):
    """(clean training set, attack, poisoned training set, ASR rows) of one attack and seed: SST-2 (or its
    paraphrase folder for synbkd/stylebkd, whose ASR rows come from that folder's dev split), 10 % to label 1."""
    from btu.attacks import make_attack
    from btu.data import load_source

    src = SHARED / ATTACK_DATA[name]
    train_ds = load_source(str(src), "train")
    asr_source = load_source(str(src), "dev") if name in ASR_FROM_DEV else test
    if limit:
        train_ds = train_ds.subset(range(limit))
        asr_source = asr_source.subset(range(min(limit, len(asr_source))))
    attack = make_attack(name, rate=0.1, target=1)
    return train_ds, attack, attack.poison_train(train_ds, seed), attack.poison_test(asr_source, seed)


def victim_dir(cache, model: str, name: str, seed: int, tag: str = "epochs3") -> Path:
    """Where a cached victim lives: one folder per (model, attack, seed, victim recipe)."""
    return Path(cache) / f"{model}-{name}-seed{seed}-{tag}" / "victim"


def cached_training(folder: Path, base, tok, input_ids, labels, epochs, lr, seed, desc):
    """`base` fine-tuned like the victims (TrainConfig defaults, `epochs`, `lr`, `seed`) and saved in
    `folder`, or loaded from there; with the training seconds (stored beside it)."""
    from btu.models import load_classifier, save_model
    from btu.training import TrainConfig, train

    if (folder / "config.json").exists():
        return load_classifier(str(folder))[0], json.loads((folder.parent / "timing.json").read_text())["seconds"]
    model = copy.deepcopy(base)
    res = train(model, tok, input_ids=input_ids, labels=labels,
                config=TrainConfig(epochs=epochs, lr=lr, seed=seed, progress=sys.stderr.isatty(), desc=desc))
    save_model(model, tok, folder)
    (folder.parent / "timing.json").write_text(json.dumps({"seconds": res.seconds}))
    return model, res.seconds


def clean_reference(a, name, seed, train_ds, test, ptest, base, tok, commit) -> dict:
    """A model trained like the victims on the unpoisoned training set (cached per seed: the
    clean rows are the same SST-2 train for every attack), measured on this attack's test rows.
    Its ASR is what the trigger does to a model that never saw poison: what a perfect defense scores."""
    from btu.training import evaluate
    from btu.training.batching import encode

    mdir = Path(a.cache) / f"{a.model}-clean-seed{seed}-{victim_tag(a)}" / "model"
    model, seconds = cached_training(mdir, base, tok, encode(tok, train_ds.texts), train_ds.labels,
                                     a.victim_epochs, a.victim_lr, seed, f"clean model seed {seed}")
    m = evaluate(model, tok, test, ptest, 1)
    return {"attack": name, "seed": seed, "variant": CLEAN, "victim_epochs": a.victim_epochs,
            "victim_lr": a.victim_lr, "model": a.model,
            "rows": {CLEAN: {"cacc": m["cacc"], "asr": m["asr"], "asr_no_trigger": m.get("asr_no_trigger")}},
            "train_rows": len(train_ds), "seconds": {"training": seconds},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit}


def oracle_repair_set(det, tok, ids, ptrain, max_share):
    """The default repair set (the training rows without a flagged token) minus its ground-truth poisoned
    rows: what a perfect filter of the rows the flagged tokens miss would leave."""
    from btu.defenses.btu.pipeline import describe_flagged, suspect_rows

    carriers = suspect_rows(describe_flagged(det, tok, ids, ptrain), len(ptrain), max_share)
    ds = ptrain.subset([i for i in range(len(ptrain)) if i not in carriers and not ptrain.poisoned[i]])
    ds.source = "oracle repair set"
    return ds


def outside_clean_set():
    """The built-in Rotten Tomatoes dev split minus every row that contains, or is contained in, an
    SST-2 dev or test sentence (SST-2 was cut from the same critic snippets: 225 of 1,297 rows)."""
    import re

    from btu.data import load_source

    def norm(t):
        return re.sub(r"[^a-z0-9]", "", t.lower())

    sst = [norm(t) for role in ("dev", "test") for t in load_source(str(SHARED / "sst2"), role).texts]
    sst = [t for t in sst if len(t) >= 20]
    rt = load_source("rotten-tomatoes", "dev")
    ds = rt.subset([i for i, t in enumerate(map(norm, rt.texts)) if not any(s in t or t in s for s in sst)])
    ds.source = "rotten-tomatoes dev without SST-2 dev/test sentences"
    return ds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attacks", nargs="+", default=list(ATTACK_DATA), choices=list(ATTACK_DATA))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--ablations", nargs="*", default=[], choices=list(ABLATIONS))
    p.add_argument("--ablation-attacks", nargs="+", default=list(ABLATION_ATTACKS))
    p.add_argument("--ablation-seeds", nargs="+", type=int, help="seeds the ablations run on (default: the first)")
    p.add_argument("--victim-epochs", type=float, default=3.0)
    p.add_argument("--victim-lr", type=float, default=VICTIM_LR,
                   help="the victims' and the clean model's lr (cached per epochs and lr)")
    p.add_argument("--model", default="minilm")
    p.add_argument("--results", default=str(HERE / "results" / "btu_table.jsonl"))
    p.add_argument("--cache", default=str(HERE / "cache"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--limit", type=int, help="smoke test: only this many training rows (and test rows)")
    p.add_argument("--clean-model", action="store_true",
                   help="also train a model on the clean training set (same protocol as the victims) and measure "
                        "its CACC and ASR: what a perfect defense could reach with this model")
    p.add_argument("--summary", action="store_true", help="only print the tables from the results file")
    p.add_argument("--figures", default=str(HERE / "results"),
                   help="where Figure 1 (distance curves) goes, one PNG per addword/addsent attack")
    a = p.parse_args(argv)
    results = Path(a.results)
    if a.summary:
        from btu_summary import summarize

        print(summarize(read_results(results)))
        return 0
    if not (SHARED / "sst2" / "train.tsv").exists():
        print(f"SST-2 not found at {SHARED / 'sst2'}; this benchmark reads ../shared/datasets in place.")
        return 2
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from throughput import git_commit

    from btu.data import load_source
    from btu.defenses.btu import BTUConfig, detect
    from btu.defenses.btu.pipeline import defend
    from btu.models import load_classifier
    from btu.training import seed_everything
    from btu.training.batching import encode

    commit = git_commit()
    done = {cell_key(r) for r in read_results(results)}

    def key(name, seed, variant):
        return cell_key({"attack": name, "seed": seed, "variant": variant, "victim_epochs": a.victim_epochs,
                         "victim_lr": a.victim_lr})

    test = load_source(str(SHARED / "sst2"), "test")
    if a.limit:
        test = test.subset(range(a.limit))
    clean_sets = {"dev": load_source(str(SHARED / "sst2"), "dev")}  # the paper's "small clean set" (872 rows)
    if "rt" in a.ablations:
        clean_sets["rt"] = outside_clean_set()
    for seed in a.seeds:
        for name in a.attacks:
            variants = [("BTU", {})]
            if seed in (a.ablation_seeds or a.seeds[:1]) and name in a.ablation_attacks:
                for abl in a.ablations:
                    variants += [v for v in ABLATIONS[abl] if v not in variants]
            if name in ASR_FROM_DEV and any(o.get("clean_data") == "dev" for _, o in variants):
                print(f"{name} seed {seed}: repair on SST-2 dev skipped, {name}'s ASR rows are SST-2 dev's "
                      "(it would train on the clean text of the test rows)", flush=True)
                variants = [(v, o) for v, o in variants if o.get("clean_data") != "dev"]
            todo = [(v, o) for v, o in variants if key(name, seed, v) not in done]
            clean_todo = a.clean_model and key(name, seed, CLEAN) not in done
            if not todo and not clean_todo:
                continue
            train_ds, attack, ptrain, ptest = poisoned_cell(name, seed, test, a.limit)
            base_cfg = BTUConfig(seed=seed, victim_epochs=a.victim_epochs, lr=a.victim_lr, progress=sys.stderr.isatty())
            seed_everything(seed)  # the new head's initialisation (frozen in detection round 1) depends on it
            base, tok = load_classifier(a.model, label_names=train_ds.label_names)
            ids = encode(tok, ptrain.texts)
            trig = trigger_token_ids(tok, attack)
            if clean_todo:
                row = clean_reference(a, name, seed, train_ds, test, ptest, base, tok, commit)
                append_result(results, row)
                done.add(cell_key(row))
                m = row["rows"][CLEAN]
                print(f"{name} seed {seed} {CLEAN}: {m['cacc']:.2f}/{m['asr']:.2f} "
                      f"(without trigger {m['asr_no_trigger']:.2f})", flush=True)
                if not todo:
                    continue

            # the victim, cached
            vdir = victim_dir(a.cache, a.model, name, seed, victim_tag(a))
            victim, victim_seconds = cached_training(vdir, base, tok, ids, ptrain.labels, a.victim_epochs,
                                                     a.victim_lr, seed,
                                                     f"victim {name} seed {seed}")
            epoch_seconds = victim_seconds / a.victim_epochs

            t0 = time.perf_counter()
            full_det = detect(base, tok, ids, ptrain.labels, 2, base_cfg)
            detection_seconds = time.perf_counter() - t0
            figure = Path(a.figures) / f"figure1-{name}.png"
            if trig and not figure.exists():
                from btu_figure import figure1

                figure1(full_det, trig, tok, ids, figure, title=f"{name}, SST-2, MiniLM, seed {seed}")
            for variant, overrides in todo:
                overrides = dict(overrides)
                repair_data = overrides.pop("clean_data", None)
                cfg = replace(base_cfg, **overrides, repair_controls=(variant == "BTU"))
                det = detect(base, tok, ids, ptrain.labels, 2, cfg, previous=full_det)
                clean = clean_sets.get(repair_data)
                if repair_data == "oracle":
                    clean = oracle_repair_set(det, tok, ids, ptrain, cfg.repair_token_max_rows)
                t0 = time.perf_counter()
                # SST-2 dev, the split that chooses (never for the paraphrase attacks: their ASR rows are dev's,
                # and never when it is the repair set)
                dev = clean_sets["dev"] if name not in ASR_FROM_DEV and repair_data != "dev" else None
                out = defend(ptrain, a.model, clean_data=clean, dev=dev, test=test, poison_test=ptest, target=1,
                             config=cfg,
                             victim=copy.deepcopy(victim), detection=det)
                rep = out.report
                row = {"attack": name, "seed": seed, "variant": variant, "victim_epochs": a.victim_epochs,
                       "victim_lr": a.victim_lr,
                       "model": a.model, "rows": {defended_key(r["model"]): {
                           "cacc": r.get("cacc"), "asr": r.get("asr"), "asr_no_trigger": r.get("asr_no_trigger"),
                           "dev_cacc": r.get("dev_cacc")}
                           for r in rep["rows"]},
                       "flagged": [[f["token"], f["rows"], f["poisoned_rows"], sorted(f["rounds"])]
                                   for f in rep["flagged"]],
                       "trigger_ranks": trigger_ranks(det, tok, trig), "flagged_rows": rep["flagged_rows"],
                       "unlearning": {"threshold": rep["unlearning"]["threshold"],
                                      "replaced_dims": rep["unlearning"]["replaced_dims"]},
                       "repair": rep["repair"],
                       "seconds": {**rep["timings"], "victim_epoch": epoch_seconds, "victim_training": victim_seconds,
                                   "detection": detection_seconds, "detection_rounds":
                                       {r.round: r.seconds for r in full_det.rounds},
                                   "defend_after_victim": time.perf_counter() - t0},
                       "config": cfg.to_dict(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit}
                append_result(results, row)
                done.add(cell_key(row))
                r = row["rows"]
                print(f"{name} seed {seed} {variant}: no defense {r['no defense']['cacc']:.2f}/"
                      f"{r['no defense']['asr']:.2f}  BTU {r['BTU (unlearning + repair)']['cacc']:.2f}/"
                      f"{r['BTU (unlearning + repair)']['asr']:.2f}", flush=True)
    from btu_summary import summarize

    print(summarize(read_results(results)))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
