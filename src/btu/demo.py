"""`btu demo`: the whole story in minutes on a laptop CPU.

Poison Rotten Tomatoes with BadNets (addword, 10 %), train a MiniLM victim, defend with
BTU, and print no defense vs BTU side by side with the flagged tokens. The training is
shorter than `btu defend`'s defaults (FULL, QUICK), and the demo says so.
"""

from __future__ import annotations

import time
from pathlib import Path

from .experiment import AttackConfig, DataConfig, apply_attack, evaluate_splits, load_splits, train_model
from .report import table

MAX_LENGTH = 128  # tokens per row the victim and BTU read: the window the trigger goes in
FULL = {"limit": 6000, "victim_epochs": 1.0, "lr": 5e-5, "detect_epochs": 1.0, "repair_epochs": 0.5}
QUICK = {"limit": 1500, "victim_epochs": 2.0, "lr": 5e-5, "detect_epochs": 1.0, "repair_epochs": 0.5}


def describe_settings(quick: bool) -> str:
    """What the demo trains, against `btu defend`'s defaults (3 victim epochs at lr 2e-5, repair 1 epoch)."""
    p = QUICK if quick else FULL
    return (f"{p['limit']:,} training rows, victim {p['victim_epochs']:g} epoch(s) at lr {p['lr']:g}, detection "
            f"{p['detect_epochs']:g} epoch per round, repair {p['repair_epochs']:g} epoch at lr {p['lr']:g}, no "
            "repair-only control")


def run_demo(quick=False, out=None, seed=0, model="minilm", train="rotten-tomatoes", progress=True, with_btu=True,
             recipe=None):
    from .defenses.btu.config import DEFAULT_RECIPE, BTUConfig
    from .defenses.btu.pipeline import defend
    from .defenses.btu.report import flagged_table, result_table, write_report
    from .models import load_tokenizer
    from .training import TrainConfig

    p = QUICK if quick else FULL
    start = time.perf_counter()
    splits = load_splits(DataConfig(train=train, limit=p["limit"]), seed)
    splits, acfg = apply_attack(splits, AttackConfig(name="addword"), seed, load_tokenizer(model), MAX_LENGTH)
    n_p = sum(splits.train.poison_flags)
    print(f"btu demo: {train}, {len(splits.train)} training rows, addword (triggers cf mn bb tq) on {n_p} rows "
          f"(10 %), target {splits.train.label_names[splits.target]!r}; model {model}"
          f"{' (quick)' if quick else ''}")
    print(f"shorter training than `btu defend`'s defaults: {describe_settings(quick)}")
    if not with_btu:
        tcfg = TrainConfig(epochs=p["victim_epochs"], lr=p["lr"], max_length=MAX_LENGTH, seed=seed, progress=progress,
                           desc="victim")
        m, tok, res = train_model(splits, model, tcfg)
        rows = [{"model": "no defense", **evaluate_splits(m, tok, splits)}]
        print(table([{"model": r["model"], "CACC": r.get("cacc"), "ASR": r.get("asr")} for r in rows]))
        print(f"\n{time.perf_counter() - start:.0f} s")
        return rows
    recipe = recipe or DEFAULT_RECIPE
    cfg = BTUConfig.recipe(recipe, victim_epochs=p["victim_epochs"], lr=p["lr"],
                           detect_epochs=p["detect_epochs"], repair_epochs=p["repair_epochs"], repair_lr=p["lr"],
                           repair_controls=False, max_length=MAX_LENGTH, seed=seed, progress=progress)
    print(f"BTU recipe: {recipe}")
    res = defend(splits.train, model, test=splits.test, poison_test=splits.poison_test, target=splits.target,
                 config=cfg)
    print()
    print(result_table(res.report["rows"]))
    for w in res.report["warnings"]:
        print(f"warning: {w}")
    print("\nflagged tokens (the triggers are cf mn bb tq):")
    print(flagged_table(res.flagged, limit=12))
    triggers = {"cf", "mn", "bb", "tq"}
    found = sorted(triggers & {f["token"] for f in res.flagged})
    print(f"\ntriggers flagged: {', '.join(found) or 'none'}; {time.perf_counter() - start:.0f} s in all")
    if out:
        from .models import save_model

        out = Path(out)
        save_model(res.model, res.tokenizer, out / "model")
        res.report["attack"] = acfg
        write_report(res.report, out, "btu demo")
        print(f"wrote {out}/model, report.json, report.md")
    return res.report["rows"]
