"""`btu defend` and `btu scan`: argument parsing and printing only."""

from __future__ import annotations

from pathlib import Path

from .config import (
    DEFAULT_RECIPE,
    RECIPES,
    REPAIR_BALANCE,
    REPAIR_CARRIERS,
    REPAIR_FILTER_LABELS,
    REPAIR_FILTERS,
    REPAIR_FROM,
    REPAIR_JUDGES,
)


def add_btu_options(p):
    g = p.add_argument_group("BTU")
    g.add_argument("--rounds", type=int, nargs="+", default=[1, 2, 3], help="detection rounds (default 1 2 3)")
    g.add_argument("--alpha", type=float, default=0.05, help="percent of the vocabulary flagged per round (0.05)")
    g.add_argument("--score", choices=["distance", "relative"], default="distance",
                   help="rank by distance (paper) or by distance relative to tokens of similar frequency")
    g.add_argument("--detect-epochs", type=float, default=1.0)
    g.add_argument("--detect-batch-size", type=int, default=32)
    g.add_argument("--detect-lr", type=float, default=2e-5)
    g.add_argument("--shallow-batch-size", type=int, default=32)
    g.add_argument("--shallow-lr", type=float, default=2e-5)
    g.add_argument("--unmasked-pooling", action="store_true", help="M* averages padding too (authors' code)")
    g.add_argument("--shallow-pad-to", type=int, help="pad M* rows to this length (authors' code: 128)")


def btu_config(a, **extra):
    from .config import BTUConfig

    kw = dict(rounds=a.rounds, alpha=a.alpha, score=a.score, detect_epochs=a.detect_epochs,
              detect_batch_size=a.detect_batch_size, detect_lr=a.detect_lr,
              shallow_batch_size=a.shallow_batch_size, shallow_lr=a.shallow_lr,
              shallow_masked_pooling=not a.unmasked_pooling, shallow_pad_to=a.shallow_pad_to, seed=a.seed,
              progress=not a.no_progress, max_length=a.max_length)
    kw.update(extra)
    # an option left out (None) takes the recipe's value, or the config's default
    return BTUConfig.recipe(getattr(a, "recipe", "unlearn"), **{k: v for k, v in kw.items() if v is not None})


def defend_config(a):
    """`btu defend`'s BTUConfig: the --recipe, with the options given on top."""
    return btu_config(a, unlearn=a.unlearn, unlearn_token_max_rows=a.unlearn_max_rows,
                     repair_filter=a.repair_filter, repair_carriers=a.repair_carriers, repair_from=a.repair_from,
                     repair_carrier_purity=a.carrier_purity,
                     repair_filter_folds=a.filter_folds, repair_filter_passes=a.filter_passes,
                     repair_filter_judge=a.filter_judge, repair_filter_labels=a.filter_labels,
                     repair_balance=a.repair_balance, fresh_lr=a.fresh_lr,
                     repair_teacher=a.repair_teacher,
                     repair_distill_weight=a.distill_weight, repair_distill_temperature=a.distill_temperature,
                     threshold=a.threshold, padding=a.padding, change_from=a.change_from,
                     victim_epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, repair_epochs=a.repair_epochs,
                     repair_lr=a.repair_lr, repair_embedding_lr=a.repair_embedding_lr,
                     repair_controls=not a.no_controls, precision=a.precision)


def cmd_defend(a):
    from ...cli import attack_config, data_config
    from ...experiment import apply_attack, load_splits
    from ...models import save_model
    from .pipeline import defend, save_distances
    from .report import flagged_table, result_table, write_report

    cfg = defend_config(a)
    splits, acfg = apply_attack(load_splits(data_config(a), a.seed), attack_config(a), a.seed)
    res = defend(splits.train, a.model, clean_data=a.clean_data, test=splits.test, poison_test=splits.poison_test,
                 target=splits.target, config=cfg, victim=a.victim, allow_pickle=a.allow_pickle,
                 trust_remote_code=a.trust_remote_code)
    out = Path(a.out)
    res.report["attack"] = acfg or None
    res.report["recipe"] = a.recipe
    save_model(res.model, res.tokenizer, out / "model")
    cfg.save(out / "btu_config.json")
    save_distances(res.detection, out / "distances.safetensors")
    write_report(res.report, out)
    print(result_table(res.report["rows"]))
    print()
    print(flagged_table(res.flagged))
    for w in res.report["warnings"]:
        print(f"warning: {w}")
    print(f"\nwrote {out}/model (the defended model), report.json, report.md, btu_config.json, distances.safetensors")


def cmd_scan(a):
    from ...cli import attack_config, data_config
    from ...data import write_file
    from ...experiment import apply_attack, load_splits
    from ...io import atomic_write_json
    from .pipeline import save_distances, scan
    from .report import flagged_table, markdown_report

    data = data_config(a)
    data.dev = data.test = None
    splits = load_splits(data, a.seed)
    if a.attack:
        splits.test = splits.train  # only the training set matters here
        splits, _ = apply_attack(splits, attack_config(a), a.seed)
    ds = splits.train
    cfg = btu_config(a, precision=a.precision)
    flagged, det, stats = scan(ds, a.model, cfg)
    print(flagged_table(flagged))
    print(f"\n{stats['flagged_rows']} of {stats['rows']} training rows carry a flagged token "
          f"(tokens in more than {stats['max_share']:.0%} of rows do not count).")
    if "precision" in stats:
        print(f"Against the ground-truth poison flags: precision {stats['precision']:.1f} %, recall "
              f"{stats['recall']:.1f} % ({stats['true_positives']} of {stats['poisoned_rows']} poisoned rows).")
    examples = {}
    for f in flagged[: a.show]:
        examples[f["token"]] = [ds.texts[i] for i in f["row_ids"][: a.examples]]
        for i in f["row_ids"][: a.examples]:
            print(f"  {f['token']!r:>14}: {ds.texts[i][:120]}")
    report = {"flagged": [{k: v for k, v in f.items() if k != "row_ids"} for f in flagged], "flagged_rows": stats,
              "examples": examples, "data": {"train": ds.source, "rows": len(ds)}, "config": cfg.to_dict(),
              "timings": {"detection": det.seconds}}
    if a.export_clean:
        from .pipeline import suspect_rows

        rows = suspect_rows(flagged, len(ds), cfg.repair_token_max_rows)
        keep = [i for i in range(len(ds)) if i not in rows]
        write_file(ds.subset(keep), a.export_clean)
        print(f"wrote {a.export_clean}: {len(keep)} rows without a flagged token "
              f"(tokens in more than {cfg.repair_token_max_rows:.0%} of rows do not count)")
    if a.out:
        out = Path(a.out)
        atomic_write_json(out / "scan.json", report)
        from ...io import atomic_write_text

        atomic_write_text(out / "scan.md", markdown_report(report, "BTU scan"))
        save_distances(det, out / "distances.safetensors")
        print(f"wrote {out}/scan.json, scan.md, distances.safetensors")


def register(sub, add_common, add_attack, add_training, epilog):
    s = sub.add_parser("defend", help="train a clean model from possibly poisoned data with BTU",
                       description="BTU: detect suspicious tokens, train normally, unlearn them; then "
                       "repair the unlearned model with clean data (--recipe unlearn, the paper's, the default), or "
                       "drop the rows the flagged tokens and the unlearned model point at and train a fresh model on "
                       "the rest (--recipe retrain). Reports no defense, unlearning only, BTU and repair only. "
                       "Writes OUT/model, report.json, report.md, btu_config.json and distances.safetensors.",
                       epilog=epilog)
    add_common(s, out_required=True, train_required=True)
    add_attack(s)
    add_training(s, epochs=3.0)
    add_btu_options(s)
    g = s.add_argument_group("unlearning and repair")
    g.add_argument("--clean-data", help="clean data for the repair (default: the training set minus rows with a "
                                        "flagged token)")
    g.add_argument("--victim", help="reuse this trained (backdoored) model folder instead of training one")
    g.add_argument("--unlearn", default="btu", choices=["btu", "row", "pr1", "pr2", "pn", "none"])
    g.add_argument("--threshold", default="frobenius", choices=["mean", "frobenius"],
                   help="d-bar: mean per-token change (paper) or Frobenius/|V| (authors' code)")
    g.add_argument("--padding", default="pretrained", choices=["pretrained", "victim", "zero"])
    g.add_argument("--change-from", default="victim", choices=["victim", "round1"])
    g.add_argument("--unlearn-max-rows", type=float, default=None,
                   help="do not unlearn flagged tokens found in more than this share of training rows (e.g. 0.15)")
    g.add_argument("--recipe", choices=list(RECIPES), default=DEFAULT_RECIPE,
                   help="unlearn (default) = the paper's BTU (unlearn, then repair the unlearned victim); retrain = "
                        "BTU's detection and unlearned victim as a data sanitizer, then a fresh model: --repair-from "
                        "pretrained --repair-filter agree+crossfit --filter-labels target --repair-carriers "
                        "other-labels-stripped --fresh-lr 1e-4 (met every target on SST-2; 1e-4 was chosen for "
                        "MiniLM: for base-size models give --fresh-lr 2e-5; it needs thousands of rows). Options "
                        "given here override the recipe's")
    g.add_argument("--repair-filter", choices=list(REPAIR_FILTERS),
                   help="without --clean-data: none (default) = drop only the rows with a flagged token; agree = "
                        "also drop rows whose label the unlearned model disputes; "
                        "repaired = repair, drop the rows whose label the repaired model disputes, repair again; "
                        "crossfit = drop the rows whose label a model repaired on the other folds disputes, then "
                        "repair (for paraphrase triggers, which carry no flagged token); agree+crossfit = agree, "
                        "then crossfit on what it kept")
    g.add_argument("--repair-carriers", choices=list(REPAIR_CARRIERS),
                   help="without --clean-data: drop (default) = leave every row with a flagged token out of the "
                        "repair; "
                        "readmit = put back those whose label the unlearned model predicts once the flagged tokens "
                        "are deleted from them; other-labels = keep those whose label is not the suspected target "
                        "(the label the rows with a flagged token lean to; dirty-label poison carries it); "
                        "other-labels-stripped = those rows without their flagged tokens")
    g.add_argument("--carrier-purity", type=float,
                   help="without --clean-data: a flagged token's rows count as carriers only if this share of them "
                        "(e.g. 0.9) carry the suspected target label; the rows of flagged words at the base rate "
                        "(`film`) stay (default: every flagged token's rows)")
    g.add_argument("--repair-from", choices=list(REPAIR_FROM),
                   help="unlearned (default) = repair the unlearned victim (BTU); pretrained = train a fresh copy "
                        "of the pretrained model on the repair set for the victim's --epochs at --fresh-lr (the "
                        "flagged rows and the filter as a data sanitizer, for backdoors outside the embeddings)")
    g.add_argument("--fresh-lr", type=float,
                   help="the lr of fresh copies of the pretrained model (--repair-from pretrained, --filter-judge "
                        "pretrained; default: --lr, the victim's; the retrain recipe's: 1e-4)")
    g.add_argument("--filter-folds", type=int, default=2, help="with --repair-filter (agree+)crossfit: folds (2)")
    g.add_argument("--filter-passes", type=int, default=1,
                   help="with --repair-filter (agree+)crossfit: filter again on what the last pass kept (1)")
    g.add_argument("--filter-judge", choices=list(REPAIR_JUDGES),
                   help="with --repair-filter (agree+)crossfit: who judges a fold: unlearned (default) = the "
                        "unlearned model repaired on the other folds; pretrained = a fresh model trained on them "
                        "(victim's --epochs, --fresh-lr); both = each must agree")
    g.add_argument("--filter-labels", choices=list(REPAIR_FILTER_LABELS),
                   help="with --repair-filter: which rows it may drop: all (default), or only those labelled as the "
                        "suspected target (the label the rows with a flagged token lean to; dirty-label poison "
                        "carries it)")
    g.add_argument("--repair-balance", choices=list(REPAIR_BALANCE), default="none",
                   help="balanced = every label weighs the same in the repair's loss (the poison took non-target "
                        "rows away, so the repair set leans to the target)")
    g.add_argument("--repair-teacher", choices=["none", "victim"], default="none",
                   help="victim = the repair also distils the victim's logits on the repair rows (soft labels)")
    g.add_argument("--distill-weight", type=float, default=0.5,
                   help="with --repair-teacher: weight of the distillation term against the labels' (0.5)")
    g.add_argument("--distill-temperature", type=float, default=2.0, help="with --repair-teacher (2.0)")
    g.add_argument("--repair-epochs", type=float, default=1.0)
    g.add_argument("--repair-lr", type=float, default=2e-5)
    g.add_argument("--repair-embedding-lr", type=float, default=1e-3,
                   help="the word embeddings' lr in repair (default 1e-3, so the unlearned rows of frequent tokens "
                        "are relearned; give the --repair-lr value to train them like the rest)")
    g.add_argument("--no-controls", action="store_true", help="skip the repair-only control model")
    s.set_defaults(func=cmd_defend)

    s = sub.add_parser("scan", help="BTU detection only: list suspicious tokens and the rows that carry them",
                       description="Runs BTU's detection rounds on a training set and lists the flagged tokens "
                       "with their scores, rounds and carrier rows. With ground-truth 'poisoned' flags (a `btu "
                       "attack` folder, or --attack), also the precision and recall of the flagged rows.",
                       epilog=epilog)
    add_common(s, train_required=True)
    add_attack(s)
    g = s.add_argument_group("scan")
    g.add_argument("--export-clean", help="write the training set without the flagged rows to this .tsv file")
    g.add_argument("--show", type=int, default=5, help="tokens to show example rows for (default 5)")
    g.add_argument("--examples", type=int, default=2, help="example rows per token (default 2)")
    g.add_argument("--max-length", type=int, default=128)
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    g.add_argument("--no-progress", action="store_true")
    add_btu_options(s)
    s.set_defaults(func=cmd_scan)
