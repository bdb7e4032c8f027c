"""BTUConfig: every choice of the paper and of the authors' code, as explicit options.

Defaults follow the paper unless a benchmark said otherwise; benchmarks/README.md records
which setting produced which number.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ...errors import ConfigError

SCORES = ("distance", "relative")
UNLEARN_METHODS = ("btu", "row", "pr1", "pr2", "pn", "none")
THRESHOLDS = ("mean", "frobenius")
PADDINGS = ("pretrained", "victim", "zero")
CHANGE_FROM = ("victim", "round1")
REPAIR_FILTERS = ("none", "agree", "repaired", "crossfit", "agree+crossfit")
REPAIR_CARRIERS = ("drop", "readmit", "other-labels", "other-labels-stripped")
REPAIR_FROM = ("unlearned", "pretrained")
REPAIR_JUDGES = ("unlearned", "pretrained", "both")
REPAIR_BALANCE = ("none", "balanced")
REPAIR_FILTER_LABELS = ("all", "target")
# named bundles of options (explicit options override them); benchmarks/README.md has what each measured
RECIPES = {
    # the paper's BTU: unlearn the flagged tokens' backdoor dimensions, repair the unlearned victim
    "unlearn": {},
    # BTU's detection and its unlearned model as a data sanitizer: drop the target-labelled rows with a flagged
    # token, those the unlearned victim disputes, and those that out-of-fold judges (the unlearned victim repaired
    # on the other folds) dispute; keep the other labels' carriers without their flagged tokens, and train a fresh
    # copy of the pretrained model on what is left (which also removes backdoors outside the embeddings)
    "retrain": {"repair_from": "pretrained", "repair_filter": "agree+crossfit", "repair_filter_labels": "target",
                "repair_carriers": "other-labels-stripped", "fresh_lr": 1e-4},
}
# what `btu defend`, `btu demo` and btu.defend(config=None) run. retrain met the four attacks' targets on SST-2 over
# seeds 0-2 (benchmarks/README.md, "`retrain` with `agree+crossfit`") but wrecks small or weakly learned sets (the
# quick demo: the sanitized set kept 57 target rows against 509), so the paper's BTU stays the default
DEFAULT_RECIPE = "unlearn"


@dataclass
class BTUConfig:
    # stage 1: detection
    rounds: list = field(default_factory=lambda: [1, 2, 3])
    alpha: float = 0.05  # percent of the vocabulary flagged per round (0.05 -> 15 of 30,522)
    detect_epochs: float = 1.0
    detect_batch_size: int = 32  # round 1 (full model, word embeddings only)
    detect_lr: float = 2e-5
    shallow_batch_size: int = 32  # rounds 2 and 3 (M*); the authors' code uses 256
    shallow_lr: float = 2e-5
    shallow_masked_pooling: bool = True  # False: average padding positions too (authors' code)
    shallow_pad_to: int | None = None  # authors' code: 128
    score: str = "distance"  # distance (paper) | relative: distance over that of tokens of similar frequency
    min_count: int = 5  # relative score: tokens in fewer rows score 0
    record_every: int | None = None  # distance history every N steps (None: about 100 points a round)
    # stage 2: unlearning
    unlearn: str = "btu"  # btu (Eq. 7) | row | pr1 | pr2 | pn | none
    threshold: str = "frobenius"  # frobenius / |V| (authors' code) | mean per-token L2 change (paper, Eq. 6)
    change_from: str = "victim"  # whose embedding change decides the dimensions: victim | round1
    padding: str = "pretrained"  # the replacement values: pretrained [PAD] row | victim's [PAD] row | zero
    unlearn_token_max_rows: float | None = None  # skip flagged tokens found in more than this share of rows
    noise_std: float | None = None  # pn: std of the noise (None: std of the pretrained embeddings)
    # the victim (the model trained normally on the possibly poisoned data)
    victim_epochs: float = 3.0
    batch_size: int = 32
    lr: float = 2e-5
    max_length: int = 128
    # clean repair after unlearning
    repair_epochs: float = 1.0
    repair_lr: float = 2e-5
    # the word embeddings' lr in repair (None: repair_lr). 1e-3 relearns the unlearned rows of frequent tokens;
    # over seeds 0-2 it put the CACC cost of all four attacks within 1.5 points (benchmarks/README.md)
    repair_embedding_lr: float | None = 1e-3
    repair_trainable: str = "all"  # all | embeddings: repair only the word embeddings (what unlearning changed)
    # default repair set: drop the carriers of flagged tokens found in at most this share of rows
    repair_token_max_rows: float = 0.15
    # default repair set: drop = leave out every carrier of such a token; readmit = put back the carriers whose
    # label the unlearned model predicts once those tokens are deleted from them (they keep the sentiment words'
    # rows in the repair, without the tokens); other-labels = keep the carriers whose label is not the suspected
    # target (the label the carriers lean to), since dirty-label poison always carries the target label;
    # other-labels-stripped = the same rows without their flagged tokens (so the repair does not learn those tokens
    # as the other labels' words)
    repair_carriers: str = "drop"
    # default repair set: count a flagged token's rows as carriers only if at least this share of them carry the
    # suspected target label (a trigger's rows all do; a frequent word's, such as `film`, are at the base rate, and
    # on a small set they are most of the target label); None: every flagged token's rows
    repair_carrier_purity: float | None = None
    # default repair set: agree = also drop rows the unlearned model mislabels; repaired = repair, drop the rows
    # the repaired model mislabels, repair the unlearned model again; crossfit = drop the rows a model repaired
    # on the other folds mislabels (repair_filter_passes times), then repair; agree+crossfit = agree, then crossfit on
    # what agree kept (the unlearned victim disputes most syntactic poison in-sample; the crossfit judges, trained on
    # the cleaner rest, catch more of what it missed and of the style poison it cannot see)
    repair_filter: str = "none"
    # which rows a filter may drop: all, or only those labelled as the suspected target (the label the rows with
    # a flagged token lean to most against the whole set): dirty-label poison all carries the target label, so
    # the other labels' rows are clean and their hard rows, which a judge disputes too, stay in the repair
    repair_filter_labels: str = "all"
    repair_filter_folds: int = 2
    repair_filter_passes: int = 1
    # crossfit's judges: the unlearned victim repaired on the other folds (blind where the victim's backdoor outlives
    # unlearning: syntax), a fresh model trained on them like the victim (blind where the poison left in the
    # folds teaches it: style), or both (a row stays only if each agrees)
    repair_filter_judge: str = "unlearned"
    # unlearned: repair the unlearned victim (BTU). pretrained: train a fresh copy of the pretrained model on the
    # repair set, like the victim (victim_epochs, lr): detection and the filters as a data sanitizer, for
    # backdoors the victim keeps outside its embeddings (paraphrase triggers)
    repair_from: str = "unlearned"
    # the lr of the fresh copies of the pretrained model (repair_from / repair_filter_judge = pretrained; None: lr).
    # MiniLM learns the repair set better at 1e-4 than at the victim's 2e-5 (benchmarks/README.md)
    fresh_lr: float | None = None
    # balanced: weight the repair's loss so each label weighs the same. The poison's rows were non-target rows
    # relabelled as the target; without them the repair set leans to the target, and so does a model trained on it
    repair_balance: str = "none"
    repair_teacher: str = "none"  # victim: distil the victim's logits on the repair rows (they carry no trigger)
    repair_distill_weight: float = 0.5
    repair_distill_temperature: float = 2.0
    repair_controls: bool = True  # also train "repair only" (no unlearning) for the report
    precision: str = "auto"
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        self.rounds = sorted({int(r) for r in self.rounds})
        if not self.rounds or any(r not in (1, 2, 3) for r in self.rounds):
            raise ConfigError(f"rounds must be a non-empty subset of 1 2 3, not {self.rounds}")
        if 3 in self.rounds and 2 not in self.rounds:
            raise ConfigError("round 3 removes round 2's tokens, so it needs round 2")
        if not 0 < self.alpha <= 100:
            raise ConfigError(f"alpha is a percent of the vocabulary in (0, 100], not {self.alpha}")
        for name, allowed in (("repair_filter", REPAIR_FILTERS), ("repair_carriers", REPAIR_CARRIERS),
                              ("repair_from", REPAIR_FROM), ("repair_filter_judge", REPAIR_JUDGES),
                              ("repair_balance", REPAIR_BALANCE), ("repair_filter_labels", REPAIR_FILTER_LABELS),
                              ("repair_teacher", ("none", "victim")),
                              ("repair_trainable", ("all", "embeddings")),
                              ("score", SCORES), ("unlearn", UNLEARN_METHODS),
                              ("threshold", THRESHOLDS), ("padding", PADDINGS), ("change_from", CHANGE_FROM)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if not 0.0 <= self.repair_distill_weight <= 1.0 or self.repair_distill_temperature <= 0:
            raise ConfigError("repair_distill_weight must be in [0, 1] and repair_distill_temperature > 0, not "
                              f"{self.repair_distill_weight} and {self.repair_distill_temperature}")
        if self.repair_filter_folds < 2 or self.repair_filter_passes < 1:
            raise ConfigError("repair_filter_folds must be at least 2 and repair_filter_passes at least 1, not "
                              f"{self.repair_filter_folds} and {self.repair_filter_passes}")
        if self.repair_carrier_purity is not None and not 0 < self.repair_carrier_purity <= 1:
            raise ConfigError(f"repair_carrier_purity must be in (0, 1] (or None), not {self.repair_carrier_purity}")
        if self.fresh_lr is not None and self.fresh_lr <= 0:
            raise ConfigError(f"fresh_lr must be positive (or None: lr), not {self.fresh_lr}")
        if self.change_from == "round1" and 1 not in self.rounds:
            raise ConfigError("change_from=round1 needs detection round 1")

    @classmethod
    def recipe(cls, name: str, **overrides) -> "BTUConfig":
        """The config of a named recipe (RECIPES), with `overrides` on top."""
        if name not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, not {name!r}")
        return cls(**{**RECIPES[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path) -> None:
        from ...io import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "BTUConfig":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
