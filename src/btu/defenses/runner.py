"""One runner for every defense: check needs, compose the steps, train each shared artifact once,
time each stage, measure every model the same way, write the same files.

`run_defense(name, train, ...)` is what `btu defend --defense NAME`, `btu.defend` and grid runs call.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data import TextDataset, load_source
from ..errors import ConfigError, ModelError
from ..training import TrainConfig, accuracy, evaluate, predict, train
from ..training.batching import encode
from ..training.seeding import seed_everything
from .base import DEFENSES, NEEDS, Defense, FilterResult, Guard, default_options, get_defense
from .options import to_dict


@dataclass
class RunSettings:
    """The settings every defense shares (they have flags): the victim's and any ordinary training's."""

    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 2e-5
    max_length: int = 128
    precision: str = "auto"
    seed: int = 0
    progress: bool = True
    controls: bool = True  # also train and measure the no-defense model (the victim) for comparison

    def __post_init__(self):
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0 or self.max_length < 2:
            raise ConfigError(f"epochs, lr must be positive, batch_size >= 1 and max_length >= 2, not {self}")


@dataclass
class RunState:
    """What the steps of one run hand on: the last filter's result, the current model, extra rows."""

    filter: FilterResult | None = None
    model: object = None
    guard: Guard | None = None
    notes: dict = field(default_factory=dict)


class Context:
    """The data, the pretrained model and the victim of one run, shared by every step (each built once)."""

    def __init__(self, train: TextDataset, model_spec: str, settings: RunSettings, clean_data=None, dev=None,
                 test=None, poison_test=None, target=None, victim=None, allow_pickle=False, trust_remote_code=False,
                 artifacts: dict | None = None, checkpoints=None, victim_seconds: float | None = None):
        from ..models import load_classifier

        self.train, self.settings, self.model_spec = train, settings, model_spec
        names = train.label_names
        self.clean_data = _as_dataset(clean_data, "train", names)
        self.dev, self.test = _as_dataset(dev, "dev", names), _as_dataset(test, "test", names)
        self.poison_test = _as_dataset(poison_test, "test", names)
        self.target = train.label_id(target) if target is not None and self.poison_test is not None else None
        self.allow_pickle, self.trust_remote_code = allow_pickle, trust_remote_code
        self.artifacts = artifacts if artifacts is not None else {}
        self.checkpoints = Path(checkpoints) if checkpoints is not None else None
        self.timings: dict[str, float] = {}
        seed_everything(settings.seed)  # the new head's initialisation
        self.base, self.tokenizer = load_classifier(model_spec, label_names=names, allow_pickle=allow_pickle,
                                                    trust_remote_code=trust_remote_code)
        self.pretrained_embeddings = self.base.get_input_embeddings().weight.detach().float().cpu().clone()
        self.input_ids = encode(self.tokenizer, train.texts, settings.max_length)
        self._victim_spec = victim
        self._victim = None
        # how long the victim's training took: measured here, or (a given victim) as recorded where it was made
        self.victim_seconds = victim_seconds if victim is not None else None
        if victim is not None:  # checked against the data and --model before any training
            self.victim()

    def checkpoint(self, name: str):
        """The folder where training `name` checkpoints each epoch (and resumes from), or None."""
        return self.checkpoints / name if self.checkpoints is not None else None

    def pretrained(self):
        """A fresh copy of the pretrained model (with the run's seeded head)."""
        return copy.deepcopy(self.base)

    def train_config(self, desc: str, epochs=None, lr=None, seed_offset: int = 0, **kw) -> TrainConfig:
        s = self.settings
        return TrainConfig(epochs=s.epochs if epochs is None else epochs, batch_size=s.batch_size,
                           lr=s.lr if lr is None else lr, max_length=s.max_length, precision=s.precision,
                           seed=s.seed + seed_offset, progress=s.progress, desc=desc, **kw)

    @property
    def has_victim(self) -> bool:
        return self._victim is not None

    def victim(self):
        """The model trained normally on the (possibly poisoned) training set: trained once, or --victim."""
        if self._victim is not None:
            return self._victim
        if self._victim_spec is not None:
            self._victim = self._load_victim(self._victim_spec)
            self.timings["victim_training"] = 0.0
            return self._victim
        model = self.pretrained()
        res = train(model, self.tokenizer, input_ids=self.input_ids, labels=self.train.labels,
                    config=self.train_config("victim training"), checkpoint=self.checkpoint("victim"))
        self.timings["victim_training"] = self.victim_seconds = res.seconds
        self.timings["victim_epoch"] = res.seconds / max(self.settings.epochs, 1e-9)
        self._victim = model
        return model

    def _load_victim(self, spec):
        from ..models import check_compatible, load_classifier

        if not isinstance(spec, (str, Path)):
            check_compatible(spec, None, self.base, self.tokenizer, self.train.label_names, "the victim")
            return spec
        model, tok = load_classifier(str(spec), allow_pickle=self.allow_pickle,
                                     trust_remote_code=self.trust_remote_code)
        check_compatible(model, tok, self.base, self.tokenizer, self.train.label_names, f"--victim {spec}")
        return model

    @contextmanager
    def timed(self, key: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    def measure(self, model, guard: Guard | None = None) -> dict:
        """CACC, ASR and ASR without trigger on the test sets (through the guard, when there is one); dev CACC."""
        p = self.settings.precision
        if guard is not None:
            return guarded_metrics(guard, self.test, self.poison_test, self.target)
        out = evaluate(model, self.tokenizer, self.test, self.poison_test, self.target, precision=p) \
            if self.test is not None or self.poison_test is not None else {}
        if self.dev is not None:
            out["dev_cacc"] = accuracy(predict(model, self.tokenizer, self.dev.texts, precision=p), self.dev.labels)
        return out


def guarded_metrics(guard: Guard, test, poison_test, target) -> dict:
    """Metrics through an input guard: a rejected clean row is an error (and a false rejection), a rejected
    poisoned row is an attack that failed (and a detection)."""
    out, det = {}, {}
    if test is not None:
        preds, rejected = guard.predict(list(test.texts))
        out["cacc"] = 100.0 * sum(int(p == y and not r) for p, y, r in zip(preds, test.labels, rejected)) / len(test)
        out["n_clean"] = len(test)
        det["frr"] = 100.0 * sum(rejected) / len(test)
    if poison_test is not None and target is not None:
        preds, rejected = guard.predict(list(poison_test.texts))
        out["asr"] = 100.0 * sum(int(p == target and not r) for p, r in zip(preds, rejected)) / len(poison_test)
        out["n_poisoned"] = len(poison_test)
        det["far"] = 100.0 * sum(not r for r in rejected) / len(poison_test)
        if "clean_text" in poison_test.columns:  # the same rows without the trigger, through the guard
            preds, rejected = guard.predict(list(poison_test.columns["clean_text"]))
            out["asr_no_trigger"] = 100.0 * sum(int(p == target and not r) for p, r in zip(preds, rejected)) / \
                len(poison_test)
    if guard.rejects:
        out["detector"] = det
    return out


def _as_dataset(data, role, label_names=None) -> TextDataset | None:
    if data is None or isinstance(data, TextDataset):
        return data
    return load_source(data, role, label_names)


@dataclass
class DefenseResult:
    model: object  # the defended classifier (for an input-stage defense: the model its guard wraps)
    tokenizer: object
    report: dict
    options: object
    settings: RunSettings
    guard: Guard | None = None
    models: dict = field(default_factory=dict)  # victim and intermediate models, with keep_models
    context: Context | None = None
    state: RunState | None = None
    defense: Defense | None = None


def resolve_options(cls: type[Defense], options=None, preset: str | None = None):
    """An options instance from None (the default preset), a preset name, a dict (on top of the preset) or an
    instance of the defense's Options."""
    if type(options) is cls.Options:
        return options
    if isinstance(options, cls.Options):  # e.g. a BTUConfig, which also holds run settings
        raise ConfigError(f"{cls.name}: options must be a {cls.Options.__name__}, not a {type(options).__name__} "
                          "(its extra fields would be ignored); for a BTUConfig, use btu.defend or pass "
                          "cfg.options() and RunSettings")
    base = default_options(cls, preset)
    if options is None:
        return base
    if not isinstance(options, dict):
        raise ConfigError(f"{cls.name}: options must be a {cls.Options.__name__} or a dict, not "
                          f"{type(options).__name__}")
    from .options import from_dict

    return from_dict(cls.Options, {**to_dict(base), **options})


def check_needs(defense: Defense, clean_data=None, victim=None, compares: bool = False) -> None:
    """Refuse, before any training, a run whose needs the caller cannot meet, and inputs it would ignore.
    compares: the run measures the no-defense model, which a given victim then is."""
    need = defense.required()
    if "clean_data" in need and clean_data is None:
        raise ConfigError(f"defense {defense.name!r} needs {NEEDS['clean_data']}")
    if clean_data is not None and not (defense.uses_clean_data or "clean_data" in need):
        raise ConfigError(f"--clean-data: defense {defense.name!r} does not use clean data")
    if victim is not None and "victim" not in need and not compares:
        raise ConfigError(f"--victim: defense {defense.name!r} with these options uses no victim, and this run "
                          "measures no no-defense model")
    lm = getattr(defense.options, "lm", None)
    if "language_model" in need and not lm:
        raise ConfigError(f"defense {defense.name!r} needs {NEEDS['language_model']}")


def run_defense(name: str, train, model: str = "minilm", options=None, preset: str | None = None,
                settings: RunSettings | None = None, clean_data=None, dev=None, test=None, poison_test=None,
                target=None, victim=None, out=None, allow_pickle=False, trust_remote_code=False,
                keep_models: bool = False, artifacts: dict | None = None, extra_report: dict | None = None,
                checkpoints=None, victim_seconds: float | None = None) -> DefenseResult:
    """Run defense `name` on the (possibly poisoned) `train` data and measure it.

    train / clean_data / dev / test / poison_test: TextDatasets or data sources. poison_test holds non-target
    rows with the trigger; with `target` (a label name or index) the report has ASR. victim: a trained model
    folder (or model) to use instead of training one. options: the defense's Options, a dict on top of `preset`,
    or None (the default preset). out: also write OUT/model, report.json, report.md and config.json.
    artifacts: results of earlier runs on the same data and model to reuse (e.g. `btu.detection`).
    checkpoints: a folder where the victim and the training on a filter's kept rows checkpoint each epoch; a
    rerun with the same folder continues from there (the caller removes it once the results are written).
    victim_seconds: how long a given victim took to train (the report's cost as a multiple of fine-tuning).
    """
    from ..io import check_out_dir

    defense, settings = make_defense(name, options, preset), settings or RunSettings()
    compares = settings.controls and any(x is not None for x in (test, poison_test, dev))
    check_needs(defense, clean_data, victim, compares)
    if out is not None:
        check_out_dir(out)
    ctx = Context(_as_dataset(train, "train"), model, settings, clean_data=clean_data, dev=dev, test=test,
                  poison_test=poison_test, target=target, victim=victim, allow_pickle=allow_pickle,
                  trust_remote_code=trust_remote_code, artifacts=artifacts, checkpoints=checkpoints,
                  victim_seconds=victim_seconds)
    state, steps = RunState(), defense.steps()
    run_steps(ctx, state, steps)
    if steps[-1][0] == "data":  # filter, then ordinary training on the kept rows: the one composition
        with ctx.timed("stage_train"):
            state.model = train_on_kept(ctx, state.filter, defense.train_overrides())
    if compares:
        ctx.victim()  # the no-defense model, for comparison
    report = build_report(defense, ctx, state, steps, preset, extra_report)
    result = DefenseResult(state.model if state.model is not None else ctx.victim(), ctx.tokenizer, report,
                           defense.options, settings, state.guard, context=ctx, state=state, defense=defense)
    if keep_models:
        result.models = {"victim": ctx._victim, **state.notes.get("models", {})}
    if out is not None:
        write_outputs(result, Path(out))
    return result


def make_defense(name: str, options=None, preset: str | None = None) -> Defense:
    """The registered defense `name` with its options resolved (see resolve_options)."""
    cls = get_defense(name)
    return cls(resolve_options(cls, options, preset))


def run_steps(ctx: Context, state: RunState, steps) -> None:
    """Each step in order, timed by stage; a post or input step without a model before it gets the victim."""
    for stage, method in steps:
        with ctx.timed(f"stage_{stage}"):
            if stage == "data":
                state.filter = method(ctx, state)
            elif stage == "train":
                state.model = method(ctx, state)
            else:
                model = state.model if state.model is not None else ctx.victim()
                if stage == "post":
                    state.model = method(ctx, state, model)
                else:
                    state.guard = method(ctx, state, model)


def run_filter(name: str, train, model: str = "minilm", options=None, preset: str | None = None,
               settings: RunSettings | None = None, clean_data=None, victim=None, allow_pickle=False,
               trust_remote_code=False, artifacts: dict | None = None) -> DefenseResult:
    """Run only a data-stage defense's steps (`btu scan`): the kept rows and a suspicion score per row, in
    `result.state.filter`; no training after them, no test sets."""
    defense, settings = make_defense(name, options, preset), settings or RunSettings()
    steps = defense.steps()
    if any(stage != "data" for stage, _ in steps):
        data_stage = ", ".join(n for n, c in sorted(DEFENSES.items())
                               if all(s == "data" for s, _ in c(default_options(c)).steps()))
        raise ConfigError(f"defense {name!r} is not a data-stage defense (its stages: "
                          f"{'+'.join(s for s, _ in steps)}); scan runs one of: {data_stage}")
    check_needs(defense, clean_data, victim)
    ctx = Context(_as_dataset(train, "train"), model, settings, clean_data=clean_data, victim=victim,
                  allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, artifacts=artifacts)
    state = RunState()
    run_steps(ctx, state, steps)
    report = {"defense": defense.name, "preset": preset or defense.default_preset, "stages": ["data"],
              "metrics": {"filter": filter_metrics(state.filter, ctx.train)}, **defense.report(ctx, state),
              "timings": dict(ctx.timings), "data": {"train": ctx.train.source, "rows": len(ctx.train)},
              "options": to_dict(defense.options), "settings": asdict(settings)}
    return DefenseResult(None, ctx.tokenizer, report, defense.options, settings, context=ctx, state=state,
                         defense=defense)


def train_on_kept(ctx: Context, kept: FilterResult, overrides: dict):
    """Ordinary training of a fresh copy of the pretrained model on a filter's kept rows (seed offset 1: the
    defended model; the victim has offset 0)."""
    if not kept.input_ids:
        raise ConfigError("the filter kept no training rows")
    model = ctx.pretrained()
    over = dict(overrides)
    objective = over.pop("objective", None)
    desc = over.pop("desc", "training on the kept rows")
    resumable = objective is None or objective.resumable
    train(model, ctx.tokenizer, input_ids=kept.input_ids, labels=list(kept.dataset.labels),
          config=ctx.train_config(desc, seed_offset=1, **over), objective=objective,
          checkpoint=ctx.checkpoint("kept") if resumable else None)
    return model


def filter_metrics(kept: FilterResult, dataset: TextDataset) -> dict:
    """Removed and kept rows; with ground-truth flags, the precision and recall of the removed rows."""
    kept_set = set(kept.kept)
    removed = [i for i in range(len(dataset)) if i not in kept_set]
    out = {"removed": len(removed), "kept": len(kept.kept)}
    if dataset.poisoned is not None:
        poisoned = sum(1 for p in dataset.poisoned if p)
        hit = sum(1 for i in removed if dataset.poisoned[i])
        out.update(precision=100.0 * hit / len(removed) if removed else None,
                   recall=100.0 * hit / poisoned if poisoned else None, poisoned_kept=poisoned - hit)
    return out


METRIC_KEYS = ("cacc", "asr", "asr_no_trigger")


def build_report(defense: Defense, ctx: Context, state: RunState, steps, preset, extra: dict | None) -> dict:
    measured = ctx.test is not None or ctx.poison_test is not None or ctx.dev is not None

    def row(name, model, guard=None):
        return {"model": name, **(ctx.measure(model, guard) if measured else {})}

    rows = [row("no defense", ctx.victim())] if ctx.has_victim else []
    rows += [row(n, m) for n, m in defense.extra_rows(ctx, state)]
    defended_name = defense.result_name or defense.name
    rows.append(row(defended_name, state.model if state.model is not None else ctx.victim(), state.guard))
    rows += [row(n, m) for n, m in defense.controls(ctx, state)]
    defended = next((r for r in rows if r["model"] == defended_name), {})
    metrics = {k: defended.get(k) for k in METRIC_KEYS}
    if "dev_cacc" in defended:
        metrics["dev_cacc"] = defended["dev_cacc"]
    if rows and rows[0]["model"] == "no defense":
        metrics["no_defense"] = {k: rows[0].get(k) for k in METRIC_KEYS + (("dev_cacc",) if "dev_cacc" in rows[0]
                                                                          else ())}
    if state.filter is not None:
        metrics["filter"] = filter_metrics(state.filter, ctx.train)
    if "detector" in defended:
        metrics["detector"] = defended.pop("detector")
    own = defense.report(ctx, state)
    stages = [s for s, _ in steps] + (["train"] if steps[-1][0] == "data" else [])
    report = {"defense": defense.name, "preset": preset or defense.default_preset, "stages": stages,
              "metrics": metrics, "rows": rows, **own,
              "timings": cost_timings(defense, ctx),
              "data": {"train": ctx.train.source, "rows": len(ctx.train), "test": getattr(ctx.test, "source", None),
                       "dev": getattr(ctx.dev, "source", None),
                       "poison_test": getattr(ctx.poison_test, "source", None),
                       "target": ctx.train.label_names[ctx.target] if ctx.target is not None else None},
              "options": to_dict(defense.options), "settings": asdict(ctx.settings)}
    report.update(extra or {})
    return report


def cost_timings(defense: Defense, ctx: Context) -> dict:
    """The run's timings, with the defense's cost: its stages' seconds (plus a given victim's recorded training
    time when the defense needs the victim: trained here, it is inside a stage) and that cost as a multiple of
    plain fine-tuning on the poisoned set (the victim's training, measured on the same machine)."""
    t = dict(ctx.timings)
    cost = sum(v for k, v in t.items() if k.startswith("stage_"))
    given = ctx._victim_spec is not None
    if given and "victim" in defense.required():
        if ctx.victim_seconds is None:
            return t  # a victim of unknown cost (--victim DIR): no multiple to report
        cost += ctx.victim_seconds
    t["defense_seconds"] = cost
    if ctx.victim_seconds:
        t["fine_tuning_seconds"] = ctx.victim_seconds
        t["multiple_of_fine_tuning"] = cost / ctx.victim_seconds
    return t


def run_config(result: DefenseResult) -> dict:
    """config.json: the defense, its resolved options, the settings, the seed and the software versions."""
    from ..experiment import environment

    r = result.report
    return {"command": "defend", "defense": r["defense"], "preset": r.get("preset"),
            "options": to_dict(result.options), "settings": asdict(result.settings), "seed": result.settings.seed,
            "model": result.context.model_spec if result.context else None, "data": r.get("data"),
            "attack": r.get("attack"), "environment": environment(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def load_run_options(path):
    """The defense name and its Options instance from a config.json written by a run."""
    import json

    from .options import from_dict

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read a run's config.json: {e}") from None
    cls = get_defense(data.get("defense", ""))
    return cls.name, from_dict(cls.Options, data.get("options") or {})


def write_outputs(result: DefenseResult, out: Path) -> None:
    """OUT/model (Hugging Face folder), report.json, report.md, config.json: each written atomically."""
    from ..io import atomic_write_json
    from ..models import save_model
    from .report import write_report

    if result.model is None:
        raise ModelError("the defense produced no model")
    defense = result.defense
    save_model(result.model, result.tokenizer, out / "model")
    write_report(result.report, out, f"{defense.name} report", defense.markdown(result.report))
    atomic_write_json(out / "config.json", run_config(result))
