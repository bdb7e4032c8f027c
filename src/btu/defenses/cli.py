"""`btu defend`, `btu scan` and `btu defenses`: argument parsing and printing only, for every registered defense.

Common settings have flags; a defense's own options come from its options dataclass, set by `--set name=value`
or `--config FILE` and validated there, so no flag is parsed and then ignored.
"""

from __future__ import annotations

from .base import DEFENSES, NEEDS, get_defense, stage_of


def add_defense_options(p, default_help: str):
    g = p.add_argument_group("defense")
    g.add_argument("--defense", metavar="NAME", help=f"a registered defense (`btu defenses`; {default_help})")
    g.add_argument("--recipe", "--preset", dest="preset", metavar="NAME",
                   help="a named bundle of the defense's options (btu: unlearn, the default, or retrain)")
    g.add_argument("--set", dest="set_values", action="append", default=[], metavar="NAME=VALUE",
                   help="set one of the defense's options (repeatable; `btu defenses show NAME` lists them)")
    g.add_argument("--config", metavar="FILE", help="the defense's options from a YAML, TOML or JSON file "
                                                    "(--set wins)")
    g.add_argument("--clean-data", metavar="SRC", help="clean data of the task, for defenses that use it (btu: the "
                                                       "repair set)")
    g.add_argument("--victim", metavar="DIR", help="a trained (possibly backdoored) model to use instead of "
                                                   "training one")
    return g


def resolve(a, default: str):
    """(defense class, its options, preset name) from --defense, --recipe, --config and --set."""
    from ..errors import ConfigError
    from .options import build_options, load_config_file, parse_set

    file_values, meta = load_config_file(a.config) if a.config else ({}, {})
    name = a.defense or meta.get("defense") or default
    if a.defense and meta.get("defense") and a.defense != meta["defense"]:
        raise ConfigError(f"--defense {a.defense} but {a.config} is for defense {meta['defense']!r}")
    cls = get_defense(name)
    preset = a.preset or meta.get("preset") or cls.default_preset
    if preset is not None and preset not in cls.presets:
        raise ConfigError(f"--recipe: defense {name!r} has " + (f"the presets {', '.join(cls.presets)}"
                          if cls.presets else "no presets") + f", not {preset!r}")
    opts = build_options(cls.Options, cls.presets.get(preset) if preset else None, file_values,
                         parse_set(a.set_values), source=a.config or "--config")
    return cls, opts, preset


def settings_from(a):
    from .runner import RunSettings

    return RunSettings(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, max_length=a.max_length,
                       precision=a.precision, seed=a.seed, progress=not a.no_progress,
                       controls=not getattr(a, "no_controls", False))


def cmd_defend(a):
    import shutil

    from ..cli import attack_config, attack_window, data_config
    from ..experiment import apply_attack, checkpoint_folder, load_splits
    from ..io import check_out_dir
    from .report import metrics_lines, result_table
    from .runner import check_needs, run_defense, write_outputs

    cls, opts, preset = resolve(a, "btu")
    defense = cls(opts)
    check_needs(defense, a.clean_data, a.victim, compares=not a.no_controls)
    out = check_out_dir(a.out)
    splits, acfg = apply_attack(load_splits(data_config(a), a.seed), attack_config(a), a.seed,
                                **attack_window(a, a.max_length))
    ckpt = checkpoint_folder(out, a.resume)
    res = run_defense(cls.name, splits.train, a.model, options=opts, preset=preset, settings=settings_from(a),
                      clean_data=a.clean_data, dev=splits.dev, test=splits.test, poison_test=splits.poison_test,
                      target=splits.target, victim=a.victim, allow_pickle=a.allow_pickle,
                      trust_remote_code=a.trust_remote_code, extra_report={"attack": acfg or None},
                      checkpoints=ckpt)
    write_outputs(res, out)
    shutil.rmtree(ckpt, ignore_errors=True)
    defense = res.defense
    extra = defense.save(res, out)
    print(result_table(res.report["rows"]))
    for line in metrics_lines(res.report["metrics"]):
        print(line)
    text = defense.console(res.report)
    if text:
        print("\n" + text.rstrip())
    for w in res.report.get("warnings", []):
        print(f"warning: {w}")
    print(f"\nwrote {out}/model (the defended model), report.json, report.md, config.json"
          + "".join(f", {f}" for f in extra))


def cmd_scan(a):
    from ..cli import attack_config, attack_window, data_config
    from ..data import write_file
    from ..errors import ConfigError
    from ..experiment import apply_attack, load_splits
    from ..io import atomic_write_json, check_out_dir
    from .report import markdown_report, metrics_lines
    from .runner import RunSettings, check_needs, run_filter

    cls, opts, preset = resolve(a, "btu-detect")
    defense = cls(opts)
    check_needs(defense, a.clean_data, a.victim)
    if "victim" not in defense.required():
        # the training flags set up the victim; a filter that never trains one would ignore them
        defaults = RunSettings()
        given = [f"--{k.replace('_', '-')}" for k in ("epochs", "lr", "batch_size")
                 if getattr(a, k) != getattr(defaults, k)]
        if given:
            raise ConfigError(f"{' '.join(given)}: {cls.name} with these options trains no victim, so nothing would "
                              "use them")
    out = check_out_dir(a.out) if a.out else None
    data = data_config(a)
    data.dev = data.test = None
    splits = load_splits(data, a.seed)
    if a.attack:
        splits.test = splits.train  # only the training set matters here
        splits, _ = apply_attack(splits, attack_config(a), a.seed, **attack_window(a, a.max_length))
    ds = splits.train
    res = run_filter(cls.name, ds, a.model, options=opts, preset=preset, settings=settings_from(a),
                     clean_data=a.clean_data, victim=a.victim, allow_pickle=a.allow_pickle,
                     trust_remote_code=a.trust_remote_code)
    kept, report, defense = res.state.filter, res.report, res.defense
    text = defense.console(report)
    if text:
        print(text.rstrip() + "\n")
    for line in metrics_lines(report["metrics"]):
        print(line)
    top = sorted(range(len(ds)), key=lambda i: -kept.scores[i])[: a.show]
    report["most_suspicious"] = [{"row": i, "score": kept.scores[i], "text": ds.texts[i]} for i in top
                                 if kept.scores[i] > 0]
    if report["most_suspicious"]:
        print(f"\nthe {len(report['most_suspicious'])} most suspicious rows:")
        for r in report["most_suspicious"]:
            print(f"  row {r['row']:>6}  score {r['score']:.3g}: {r['text'][:110]}")
    if a.export_clean:
        write_file(kept.dataset, a.export_clean)
        print(f"wrote {a.export_clean}: the {len(kept.kept)} rows {cls.name} keeps")
    if out is not None:
        atomic_write_json(out / "scan.json", report)
        from ..io import atomic_write_text

        atomic_write_text(out / "scan.md", markdown_report(report, f"{cls.name} scan", defense.markdown(report)))
        extra = defense.save(res, out)
        print(f"wrote {out}/scan.json, scan.md" + "".join(f", {f}" for f in extra))


def cmd_defenses(a):
    from ..report import table
    from .options import describe

    if a.action is None:
        print(table([{"defense": n, "stages": stage_of(c), "needs": ", ".join(sorted(c.needs)),
                      "what": c.summary if len(c.summary) <= 80 else c.summary[:77] + "..."}
                     for n, c in sorted(DEFENSES.items())]))
        print("\n`btu defenses show NAME` lists a defense's options; set them with --set NAME=VALUE or --config FILE.")
        return
    if a.action != "show" or not a.name:
        from ..errors import ConfigError

        raise ConfigError("usage: btu defenses [show NAME]")
    cls = get_defense(a.name)
    print(f"{cls.name}: {cls.summary}")
    print(f"stages: {stage_of(cls)}" + (" (then ordinary training on the kept rows)" if stage_of(cls).endswith("data")
                                         else ""))
    print("needs: " + "; ".join(f"{n} = {NEEDS[n]}" for n in sorted(cls.needs)))
    if cls.presets:
        print("presets (--recipe): " + "; ".join(
            f"{p}{' (default)' if p == cls.default_preset else ''}"
            + (": " + ", ".join(f"{k}={v}" for k, v in vals.items()) if vals else ": the defaults")
            for p, vals in cls.presets.items()))
    print()
    print(describe(cls.Options))


def register(sub, add_common, add_attack, add_training, epilog):
    from ..cli import Compact

    s = sub.add_parser("defend", help="train a clean model from possibly poisoned data with a defense (default btu)",
                       formatter_class=Compact, usage="btu defend --train SRC --out DIR [--defense NAME] [options]",
                       description="Run a defense (`btu defenses` lists them; default btu, the paper's BTU) on the "
                       "training data and compare it with no defense. Writes OUT/model (the defended model), "
                       "report.json (its 'metrics': cacc, asr, asr_no_trigger, no_defense, filter, detector), "
                       "report.md and config.json.", epilog=epilog)
    add_common(s, out_required=True, train_required=True)
    add_attack(s)
    add_training(s, epochs=3.0, trainable=False)
    g = add_defense_options(s, "default btu")
    g.add_argument("--no-controls", action="store_true",
                   help="skip the comparison models (no defense; the defense's controls)")
    g.add_argument("--resume", action="store_true", help="continue a killed run: the victim and the training on "
                                                         "kept rows resume from OUT/.checkpoint (last finished epoch)")
    s.set_defaults(func=cmd_defend)

    s = sub.add_parser("scan", help="run a data-stage defense alone: suspicion scores and the rows it keeps",
                       formatter_class=Compact, usage="btu scan --train SRC [--defense NAME] [options]",
                       description="Runs a data-stage defense (default btu-detect: BTU's detection rounds) on a "
                       "training set and prints what it found (btu-detect: the flagged tokens with their rounds and "
                       "carrier rows), the most suspicious rows and, with ground-truth 'poisoned' flags (a `btu "
                       "attack` folder, or --attack), the precision and recall of the removed rows.", epilog=epilog)
    add_common(s, train_required=True, evaluation=False)
    add_attack(s)
    add_training(s, epochs=3.0, trainable=False)
    add_defense_options(s, "default btu-detect")
    g = s.add_argument_group("scan")
    g.add_argument("--export-clean", metavar="FILE", help="write the rows the defense keeps (.tsv, .csv, .jsonl)")
    g.add_argument("--show", type=int, default=5, help="most suspicious rows to print (default 5)")
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("defenses", help="list the registered defenses; `show NAME`: its options",
                       description="Lists every registered defense with its stages and needs; `btu defenses show "
                       "NAME` lists its options with their defaults and help, and its presets.")
    s.add_argument("action", nargs="?", choices=["show"], help="show one defense's options")
    s.add_argument("name", nargs="?", help="the defense")
    s.set_defaults(func=cmd_defenses)


def option_hint(message: str) -> str | None:
    """For an unrecognised --flag that names a defense option: how to set it now (`--set name=VALUE`)."""
    import difflib
    import re
    from dataclasses import fields

    m = re.search(r"unrecognized arguments: (--[\w-]+)", message)
    if not m:
        return None
    flag = m.group(1)[2:].replace("-", "_")
    renamed = {"unmasked_pooling": "shallow_masked_pooling=false"}  # old flags whose option reads the other way
    if flag in renamed:
        return f"a defense's options are set with --set: try --set {renamed[flag]} (`btu defenses show NAME`)"
    names = sorted({f.name for c in DEFENSES.values() for f in fields(c.Options)})
    exact = [n for n in names if n in (flag, f"repair_{flag}", f"shallow_{flag}")]
    close = exact or difflib.get_close_matches(flag, names, n=1, cutoff=0.75) or \
        [n for n in names if n.endswith(flag)][:1]
    return f"a defense's options are set with --set: try --set {close[0]}=VALUE (`btu defenses show NAME`)" \
        if close else None

