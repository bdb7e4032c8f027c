"""The pieces every command composes: load the splits, poison them, train, evaluate, save.

Kept here (not in the CLI) so Python users, benchmarks and later grid runners call the
same code the command line does.
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .attacks import TokenWindow, make_attack
from .data import TextDataset, load_source, write_file
from .data.sources import has_split
from .errors import ConfigError
from .io import atomic_write_json
from .models import DEFAULT_MODEL, load_classifier, save_model
from .training import TrainConfig, evaluate, train


@dataclass
class DataConfig:
    """Where the splits come from. dev/test default to the training source's own splits."""

    train: str = "rotten-tomatoes"
    dev: str | None = None
    test: str | None = None
    poison_test: str | None = None  # the source of ASR rows; default: the test set
    text_column: str | None = None
    label_column: str | None = None
    limit: int | None = None  # keep a seeded random subset of this many training rows


@dataclass
class AttackConfig:
    name: str | None = None  # None: no attack (the data may already be poisoned)
    rate: float = 0.1
    target: str | None = None  # a label name or index; default: the attack folder's target, else "1"
    label_policy: str = "dirty"
    options: dict = field(default_factory=dict)  # attack-specific: triggers, insertions, sentence, column


@dataclass
class Splits:
    train: TextDataset
    dev: TextDataset | None
    test: TextDataset | None
    poison_test: TextDataset | None = None  # non-target rows with the trigger: the ASR set
    target: int | None = None
    recorded_target: str | None = None  # the target written in a `btu attack` folder's attack.json


def attack_record(source) -> dict:
    """attack.json of a `btu attack` output folder (label names in their ids' order, target), or {}."""
    path = Path(str(source)) / "attack.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("attack") or {}
    except (OSError, ValueError):
        return {}


def load_splits(cfg: DataConfig, seed: int = 0, label_names=None) -> Splits:
    kw = dict(text_column=cfg.text_column, label_column=cfg.label_column)
    record = attack_record(cfg.train)
    if label_names is None and record.get("label_names"):
        label_names = record["label_names"]  # keep the ids the attack used, whatever their sort order
    train_ds = load_source(cfg.train, "train", label_names, **kw)
    names = train_ds.label_names
    if cfg.limit and cfg.limit < len(train_ds):
        rng = random.Random(f"{seed}:limit")
        train_ds = train_ds.subset(sorted(rng.sample(range(len(train_ds)), cfg.limit)))

    def split(spec, role):
        if spec is None:
            if not has_split(cfg.train, role) and not (role == "test" and has_split(cfg.train, "dev")):
                return None
            spec = cfg.train
        return load_source(spec, role, names, **kw)

    dev = split(cfg.dev, "dev")
    test = split(cfg.test, "test")
    poison_test = None
    if cfg.poison_test is not None:
        poison_test = load_source(cfg.poison_test, "test", names, **kw)
    elif cfg.test is None and has_split(cfg.train, "poison-test"):
        poison_test = load_source(cfg.train, "poison-test", names, **kw)  # `btu attack` output
    return Splits(train_ds, dev, test, poison_test, recorded_target=record.get("target_name"))


def evaluation_splits(test_spec, poison_test_spec=None, label_names=None, text_column=None, label_column=None,
                      look_for_poisoned=True) -> Splits:
    """The splits `btu evaluate` needs: a clean test set, and ASR rows from --poison-test or
    from the test-poisoned split of a `btu attack` folder (whose target is remembered)."""
    kw = dict(text_column=text_column, label_column=label_column)
    test = load_source(test_spec, "test", label_names, **kw)
    poison_test = load_source(poison_test_spec, "test", label_names, **kw) if poison_test_spec else None
    if poison_test is None and look_for_poisoned and has_split(test_spec, "poison-test"):
        poison_test = load_source(test_spec, "poison-test", label_names, **kw)
    return Splits(test, None, test, poison_test, recorded_target=attack_record(test_spec).get("target_name"))


def apply_attack(splits: Splits, acfg: AttackConfig, seed: int, tokenizer=None,
                 max_length: int | None = None) -> tuple[Splits, dict]:
    """Poison the training set and build the ASR set; returns the new splits and the attack's config.

    With the model's tokenizer and max_length, insertion attacks put the trigger inside the first
    max_length tokens; without them it may land beyond truncation (on long texts the model never sees it).
    """
    wanted = acfg.target if acfg.target is not None else (splits.recorded_target or "1")
    if acfg.name is None:
        if splits.poison_test is not None:
            splits.target = splits.train.label_id(wanted)
        return splits, {}
    target = splits.train.label_id(wanted)
    attack = make_attack(acfg.name, rate=acfg.rate, target=target, label_policy=acfg.label_policy, **acfg.options)
    if tokenizer is not None and max_length is not None:
        attack.window = TokenWindow(tokenizer, max_length)
    train_p = attack.poison_train(splits.train, seed)
    source = splits.poison_test if splits.poison_test is not None else splits.test
    if source is None:
        raise ConfigError("no test set to build the attack's ASR rows from; give --test")
    poison_test = attack.poison_test(source, seed)
    record = attack.config() | {"label_names": list(splits.train.label_names),
                                "target_name": splits.train.label_names[target]}
    if attack.window is not None:
        record["window"] = max_length
    return Splits(train_p, splits.dev, splits.test, poison_test, target), record


def write_splits(splits: Splits, out: Path) -> None:
    write_file(splits.train, out / "train.tsv")
    if splits.dev is not None:
        write_file(splits.dev, out / "dev.tsv")
    if splits.test is not None:
        write_file(splits.test, out / "test.tsv")
    if splits.poison_test is not None:
        write_file(splits.poison_test, out / "test-poisoned.tsv")


def environment() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(),
            "cuda": torch.cuda.is_available()}


def evaluate_splits(model, tokenizer, splits: Splits, precision="auto") -> dict:
    """CACC and ASR on the test splits; dev CACC where there is a dev split (choose on dev, report on test)."""
    out = evaluate(model, tokenizer, splits.test, splits.poison_test, splits.target, precision=precision)
    if splits.dev is not None and splits.dev is not splits.test:
        from .training import accuracy, predict

        out["dev_cacc"] = accuracy(predict(model, tokenizer, splits.dev.texts, precision=precision), splits.dev.labels)
    return out


def train_model(splits: Splits, model_spec: str = DEFAULT_MODEL, tcfg: TrainConfig | None = None,
                allow_pickle=False, trust_remote_code=False, checkpoint=None):
    """A fresh classifier from model_spec fine-tuned on splits.train. Returns (model, tokenizer, TrainResult).
    checkpoint: a folder to checkpoint each epoch in, and to resume from (see training.checkpoint)."""
    tcfg = tcfg or TrainConfig()
    model, tok = load_classifier(model_spec, label_names=splits.train.label_names,
                                 allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    result = train(model, tok, splits.train.texts, splits.train.labels, tcfg, checkpoint=checkpoint)
    return model, tok, result


def checkpoint_folder(out, resume: bool, name: str = ".checkpoint") -> Path:
    """OUT/.checkpoint: where a command's trainings checkpoint. Without --resume an old one is removed (a fresh
    start); with it, a training finds its checkpoint there and continues."""
    import shutil

    folder = Path(out) / name
    if not resume and folder.exists():
        shutil.rmtree(folder)
    return folder


def save_run(out: Path, model, tokenizer, metrics: dict, config: dict) -> None:
    """out/model (a Hugging Face folder), out/metrics.json, out/config.json: all atomic."""
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:
        save_model(model, tokenizer, out / "model")
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "config.json", config)


def run_config(command: str, seed: int, model: str, data: DataConfig, attack: dict | None = None,
               train_cfg: TrainConfig | None = None, **extra) -> dict:
    return {"command": command, "seed": seed, "model": model, "data": asdict(data),
            "attack": attack or None, "train": train_cfg.to_dict() if train_cfg else None,
            "environment": environment(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}

