"""BTUOptions: every choice of the paper and of the authors' code, as explicit options; BTUConfig: those plus the
run settings (victim training, batch size, lr, max length, precision, seed, progress).

Defaults follow the paper unless a benchmark said otherwise; benchmarks/README.md records
which setting produced which number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from ...errors import ConfigError
from ..options import Options, option

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
DECIDE = ("evidence", "all")
# named bundles of options (explicit options override them); benchmarks/README.md has what each measured
RECIPES = {
    # BTU: unlearn the backdoor dimensions of the flagged tokens the evidence calls shortcuts, repair the unlearned
    # victim on the rows without them
    "unlearn": {},
    # the paper's BTU: unlearn every flagged token, repair on the rows without any rare one
    "paper": {"decide": "all"},
    # BTU's detection and its unlearned model as a data sanitizer: drop the target-labelled rows with a flagged
    # token, those the unlearned victim disputes, and those that out-of-fold judges (the unlearned victim repaired
    # on the other folds) dispute; keep the other labels' carriers without their flagged tokens, and train a fresh
    # copy of the pretrained model on what is left (which also removes backdoors outside the embeddings)
    # (every flagged token: its judges are the victim unlearned of all of them, which is what disputes paraphrase
    # poison; unlearned of the shortcuts alone, a victim with a syntax trigger would be its own judge)
    "retrain": {"repair_from": "pretrained", "repair_filter": "agree+crossfit", "repair_filter_labels": "target",
                "repair_carriers": "other-labels-stripped", "fresh_lr": 1e-4, "decide": "all"},
}
# what `btu defend`, `btu demo` and btu.defend(config=None) run. retrain met the four attacks' targets on SST-2 over
# seeds 0-2 (benchmarks/README.md, "`retrain` with `agree+crossfit`") but wrecks small or weakly learned sets (the
# quick demo: the sanitized set kept 57 target rows against 509), so the paper's BTU stays the default
DEFAULT_RECIPE = "unlearn"


# the runner's common settings: BTUConfig has them, BTUOptions does not
SETTINGS = ("victim_epochs", "batch_size", "lr", "max_length", "precision", "seed", "progress")


@dataclass
class BTUOptions(Options):
    """BTU's hyperparameters (the run settings are BTUConfig's)."""

    # stage 1: detection
    rounds: list[int] = option(help="detection rounds (round 3 needs round 2)", factory=lambda: [1, 2, 3],
                               choices=(1, 2, 3))
    alpha: float = option(0.05, "percent of the vocabulary flagged per round (0.05 -> 15 of 30,522)",
                          low=0, high=100, low_inclusive=False)
    detect_epochs: float = option(1.0, "epochs of each detection round", low=0)
    detect_batch_size: int = option(32, "batch size of round 1 (full model, word embeddings only)", low=1)
    detect_lr: float = option(2e-5, "lr of round 1", low=0)
    shallow_batch_size: int = option(32, "batch size of rounds 2 and 3 (M*); the authors' code uses 256", low=1)
    shallow_lr: float = option(2e-5, "lr of rounds 2 and 3 (M*)", low=0)
    shallow_masked_pooling: bool = option(True, "M* averages only the real tokens; false: padding too (authors' "
                                                "code)")
    shallow_pad_to: int | None = option(None, "pad M* rows to this length (authors' code: 128; none: the batch's "
                                              "longest)", low=1)
    score: str = option("distance", "rank by distance (paper) or by distance relative to tokens of similar "
                                    "frequency", choices=SCORES)
    min_count: int = option(5, "relative score: tokens in fewer rows score 0", low=0)
    record_every: int | None = option(None, "distance history every N steps (none: about 100 points a round)",
                                      low=1)
    # stage 1b: what each flagged token is. A task's own words move as fast as a trigger on a task decided by a
    # few words; a trigger's rows lean to one label that their content contradicts (evidence.py)
    decide: str = option("evidence", "which flagged tokens are unlearned (and their rows left out of the repair): "
                                     "evidence (those whose rows lean to one label that a judge fitted without "
                                     "them disputes) or all (the paper's)", choices=DECIDE)
    decide_dispute: float = option(0.4, "evidence: unlearn a token when the judge disputes at least this share of "
                                        "its rows' labels", low=0, high=1)
    decide_excess: float = option(0.2, "evidence: and this much more often (a share) than it disputes "
                                        "ordinary rows of that label",
                                  low=0, high=1)
    decide_z: float = option(3.0, "evidence: and that excess must be this many standard errors",
                             low=0)
    decide_purity: float = option(0.5, "evidence: and this share of the token's rows must carry the label "
                                       "they lean to", low=0, high=1)
    # stage 2: unlearning
    unlearn: str = option("btu", "how flagged tokens are unlearned: btu (Eq. 7), row, pr1, pr2, pn (noise), none",
                          choices=UNLEARN_METHODS)
    threshold: str = option("frobenius", "d-bar: Frobenius/|V| (authors' code) or the mean per-token L2 change "
                                         "(paper, Eq. 6)", choices=THRESHOLDS)
    change_from: str = option("victim", "whose embedding change decides the dimensions (round1 needs round 1)",
                              choices=CHANGE_FROM)
    padding: str = option("pretrained", "the replacement values: the pretrained [PAD] row, the victim's, or zero",
                          choices=PADDINGS)
    unlearn_token_max_rows: float | None = option(None, "skip flagged tokens found in more than this share of "
                                                        "rows (e.g. 0.15; none: unlearn all)", low=0, high=1)
    noise_std: float | None = option(None, "pn: std of the noise (none: std of the pretrained embeddings)", low=0)
    # clean repair after unlearning
    repair_epochs: float = option(1.0, "epochs of the clean repair after unlearning", low=0)
    repair_lr: float = option(2e-5, "lr of the repair", low=0)
    # 1e-3 relearns the unlearned rows of frequent tokens; over seeds 0-2 it put the CACC cost of all four attacks
    # within 1.5 points (benchmarks/README.md)
    repair_embedding_lr: float | None = option(1e-3, "the word embeddings' lr in repair, so the unlearned rows of "
                                                     "frequent tokens are relearned (none: repair_lr)", low=0)
    repair_trainable: str = option("all", "what the repair trains: all, or only the word embeddings (what "
                                          "unlearning changed)", choices=("all", "embeddings"))
    repair_token_max_rows: float = option(0.15, "default repair set: drop the carriers of flagged tokens found in "
                                                "at most this share of rows", low=0, high=1)
    # drop = leave out every carrier of such a token; readmit = put back the carriers whose label the unlearned
    # model predicts once those tokens are deleted from them (they keep the sentiment words' rows in the repair,
    # without the tokens); other-labels = keep the carriers whose label is not the suspected target (the label the
    # carriers lean to), since dirty-label poison always carries the target label; other-labels-stripped = the
    # same rows without their flagged tokens (so the repair does not learn those tokens as the other labels' words)
    repair_carriers: str = option("drop", "default repair set: the rows with a flagged token: drop them, readmit "
                                          "those the unlearned model labels right without those tokens, keep the "
                                          "other labels' (other-labels), or those without the tokens "
                                          "(other-labels-stripped)", choices=REPAIR_CARRIERS)
    # a trigger's rows all carry the target; a frequent word's, such as `film`, are at the base rate, and on a
    # small set they are most of the target label
    repair_carrier_purity: float | None = option(None, "default repair set: a flagged token's rows count as "
                                                       "carriers only if this share of them carry the suspected "
                                                       "target label (none: every flagged token's rows)",
                                                 low=0, high=1, low_inclusive=False)
    # agree = also drop rows the unlearned model mislabels; repaired = repair, drop the rows the repaired model
    # mislabels, repair the unlearned model again; crossfit = drop the rows a model repaired on the other folds
    # mislabels (repair_filter_passes times), then repair; agree+crossfit = agree, then crossfit on what agree kept
    # (the unlearned victim disputes most syntactic poison in-sample; the crossfit judges, trained on the cleaner
    # rest, catch more of what it missed and of the style poison it cannot see)
    repair_filter: str = option("none", "default repair set: also drop the rows whose label the unlearned model "
                                        "(agree), the repaired model (repaired) or out-of-fold judges (crossfit) "
                                        "dispute; agree+crossfit: both", choices=REPAIR_FILTERS)
    # dirty-label poison all carries the target label, so the other labels' rows are clean and their hard rows,
    # which a judge disputes too, stay in the repair
    repair_filter_labels: str = option("all", "which rows a filter may drop: all, or only those labelled as the "
                                              "suspected target", choices=REPAIR_FILTER_LABELS)
    repair_filter_folds: int = option(2, "repair_filter (agree+)crossfit: folds", low=2)
    repair_filter_passes: int = option(1, "repair_filter (agree+)crossfit: filter again on what the last pass "
                                          "kept, this many passes", low=1)
    # the unlearned victim repaired on the other folds is blind where the victim's backdoor outlives unlearning
    # (syntax); a fresh model trained on them like the victim is blind where the poison left in the folds teaches
    # it (style)
    repair_filter_judge: str = option("unlearned", "crossfit's judges: the unlearned victim repaired on the other "
                                                   "folds, a fresh pretrained model trained on them, or both (each "
                                                   "must agree)", choices=REPAIR_JUDGES)
    repair_from: str = option("unlearned", "repair the unlearned victim (BTU), or train a fresh copy of the "
                                           "pretrained model on the repair set like the victim (a data sanitizer, "
                                           "for backdoors outside the embeddings)", choices=REPAIR_FROM)
    # MiniLM learns the repair set better at 1e-4 than at the victim's 2e-5 (benchmarks/README.md)
    fresh_lr: float | None = option(None, "the lr of fresh copies of the pretrained model (repair_from / "
                                          "repair_filter_judge pretrained; none: lr, the victim's)",
                                    low=0, low_inclusive=False)
    # the poison's rows were non-target rows relabelled as the target; without them the repair set leans to the
    # target, and so does a model trained on it
    repair_balance: str = option("none", "balanced: weight the repair's loss so each label weighs the same",
                                 choices=REPAIR_BALANCE)
    repair_teacher: str = option("none", "victim: the repair also distils the victim's logits on the repair rows "
                                         "(they carry no trigger)", choices=("none", "victim"))
    repair_distill_weight: float = option(0.5, "with repair_teacher: weight of the distillation term against the "
                                               "labels'", low=0, high=1)
    repair_distill_temperature: float = option(2.0, "with repair_teacher: the distillation temperature",
                                               low=0, low_inclusive=False)
    repair_controls: bool = option(True, "also train \"repair only\" (no unlearning) for the report")

    def __post_init__(self):
        # crossfit's folds and passes go together: one message names both (before the per-option checks)
        folds, passes = self.repair_filter_folds, self.repair_filter_passes
        if isinstance(folds, int) and isinstance(passes, int) and (folds < 2 or passes < 1):
            raise ConfigError("options repair_filter_folds and repair_filter_passes: crossfit needs at least 2 folds "
                              f"and 1 pass, not {folds} and {passes}")
        super().__post_init__()
        self.rounds = sorted(set(self.rounds))
        if not self.rounds:
            raise ConfigError("option rounds: must be a non-empty subset of 1 2 3, not []")
        if 3 in self.rounds and 2 not in self.rounds:
            raise ConfigError(f"option rounds: round 3 removes round 2's tokens, so it needs round 2, not "
                              f"{self.rounds}")
        if self.change_from == "round1" and 1 not in self.rounds:
            raise ConfigError(f"option change_from: round1 needs detection round 1 in rounds, not {self.rounds}")

    @classmethod
    def recipe(cls, name: str, **overrides):
        """The options of a named recipe (RECIPES), with `overrides` on top."""
        if name not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, not {name!r}")
        return cls(**{**RECIPES[name], **overrides})


@dataclass
class BTUConfig(BTUOptions):
    """BTUOptions plus the run settings: what btu.defend and btu.scan take."""

    # the victim (the model trained normally on the possibly poisoned data)
    victim_epochs: float = option(3.0, "epochs of the victim (and of fresh pretrained copies)", low=0)
    batch_size: int = option(32, "batch size of the victim and the repair", low=1)
    lr: float = option(2e-5, "lr of the victim", low=0)
    max_length: int = option(128, "tokens per row, longer rows are cut", low=1)
    precision: str = option("auto", "auto (bf16 where the hardware has it), bf16 or fp32",
                            choices=("auto", "bf16", "fp32"))
    seed: int = option(0, "random seed")
    progress: bool = option(True, "show progress bars")

    def options(self) -> BTUOptions:
        """The hyperparameter part, as BTUOptions."""
        return BTUOptions(**{f.name: getattr(self, f.name) for f in fields(BTUOptions)})

    def settings(self) -> dict:
        """The run settings: victim_epochs, batch_size, lr, max_length, precision, seed, progress."""
        return {name: getattr(self, name) for name in SETTINGS}

    def save(self, path) -> None:
        from ...io import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "BTUConfig":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
