"""BTU on the defense frame: `btu` (detection -> victim -> unlearning -> repair, the paper's; its `retrain`
preset: detection as a data filter, then a fresh model on the kept rows) and `btu-detect` (the data step alone,
for `btu scan` and filter-then-train).

The steps share one `BTUWork` per run: detection, the flagged tokens, the unlearned victim, the repair set,
each computed once.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ...errors import ConfigError
from ...training import predict_logits, train
from ...training.batching import encode
from ...training.objectives import Distillation, WeightedCrossEntropy, balanced_class_weights
from ..base import Defense, FilterResult, register
from .config import DEFAULT_RECIPE, RECIPES, BTUConfig, BTUOptions
from .detection import detect, distance_curves
from .evidence import pooled_features
from .pipeline import (
    agreeing,
    decide_flagged,
    describe_flagged,
    flagged_row_stats,
    lean_warnings,
    rare_flagged,
    shortcuts,
    suspect_rows,
    suspected_target,
    target_carriers,
)
from .unlearning import unlearn_rows

JUDGES = {"unlearned": "the unlearned model repaired on the other folds",
          "pretrained": "a fresh model trained on the other folds",
          "both": "the unlearned model repaired and a fresh model trained on the other folds, each"}


class BTUWork:
    """BTU's artifacts in one run, each computed once and shared by its steps."""

    def __init__(self, ctx, opts: BTUOptions):
        s = ctx.settings
        self.ctx = ctx
        self.cfg = BTUConfig(**asdict(opts), victim_epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                             max_length=s.max_length, precision=s.precision, seed=s.seed, progress=s.progress)
        self.from_scratch = self.cfg.repair_from == "pretrained"  # the defended model is trained fresh
        self.fresh_lr = self.cfg.lr if self.cfg.fresh_lr is None else self.cfg.fresh_lr
        self._unlearned = self.info = None
        self.repair_only = None
        self.built = False

    # detection ----------------------------------------------------------------------------------------------------
    def detect(self):
        ctx, cfg = self.ctx, self.cfg
        det = ctx.artifacts.get("btu.detection")
        if det is None:
            det = detect(ctx.base, ctx.tokenizer, ctx.input_ids, ctx.train.labels, ctx.train.num_labels, cfg)
            ctx.artifacts["btu.detection"] = det
            ctx.timings["detection"] = det.seconds
        else:  # an earlier run's: this run spent nothing on it
            ctx.timings["detection"] = 0.0
            ctx.timings["detection_reused_seconds"] = det.seconds
        self.detection = det
        self.flagged = describe_flagged(det, ctx.tokenizer, ctx.input_ids, ctx.train)
        self.decide()
        self.candidates = shortcuts(self.flagged)
        self.token_ids = [t for t in det.token_ids if t in {f["id"] for f in self.candidates}]
        if cfg.unlearn_token_max_rows is not None:
            # a token in most rows (".", "the") moves because every batch pushes it, not because it is a trigger
            self.token_ids = [f["id"] for f in self.candidates
                              if f["rows"] <= cfg.unlearn_token_max_rows * len(ctx.train)]

    def decide(self):
        """Each flagged token's decision (unlearn / keep), with its evidence and the reason (decide=all: every
        token is unlearned, the paper's)."""
        ctx, cfg = self.ctx, self.cfg
        if cfg.decide == "all":
            decide_flagged(self.flagged, cfg)
            return
        start = time.perf_counter()
        features = ctx.artifacts.get("btu.features")
        if features is None:
            features = pooled_features(ctx.base, ctx.tokenizer, ctx.input_ids, precision=cfg.precision)
            ctx.artifacts["btu.features"] = features
        decide_flagged(self.flagged, cfg, features, ctx.train.labels, ctx.train.label_names)
        ctx.timings["decisions"] = time.perf_counter() - start

    # unlearning ---------------------------------------------------------------------------------------------------
    def unlearned(self):
        """The victim with the flagged tokens' backdoor dimensions overwritten (Eq. 7)."""
        if self._unlearned is None:
            cfg, ctx = self.cfg, self.ctx
            model = copy.deepcopy(ctx.victim())
            weight = model.get_input_embeddings().weight
            changed = self.detection.round(1).trained_embeddings if cfg.change_from == "round1" else None
            self.info = unlearn_rows(weight.data, ctx.pretrained_embeddings, self.token_ids, cfg.unlearn,
                                     cfg.threshold, cfg.padding, ctx.tokenizer.pad_token_id, changed=changed,
                                     noise_std=cfg.noise_std, seed=cfg.seed)
            self._unlearned = model
        return self._unlearned

    # training helpers ---------------------------------------------------------------------------------------------
    def objective(self, labels, teacher=None):
        """The repair's loss: the labels' (balanced per label with repair_balance), distilling `teacher`."""
        cfg = self.cfg
        weights = balanced_class_weights(labels, self.ctx.train.num_labels) if cfg.repair_balance == "balanced" \
            else None
        base = WeightedCrossEntropy(weights) if weights is not None else None
        if teacher is not None:
            return Distillation(teacher, cfg.repair_distill_weight, cfg.repair_distill_temperature, base=base)
        return base

    def fresh_overrides(self, desc: str) -> dict:
        """How a fresh copy of the pretrained model is trained on repair rows: like the victim, at fresh_lr."""
        return {"lr": self.fresh_lr, "objective": self.objective(list(self.repair_ds.labels)), "desc": desc}

    def repair(self, model, desc, rows=None, like_victim=False):
        """A copy of `model` fine-tuned on the repair rows (all, or these positions in the repair set), distilling
        the teacher when there is one; like_victim: trained like the victim (its epochs, at fresh_lr) and never
        distilling it, whose logits would teach a fresh model the victim's backdoor back."""
        cfg, ctx = self.cfg, self.ctx
        rows = list(range(len(self.repair_ids))) if rows is None else rows
        labels = [self.repair_ds.labels[i] for i in rows]
        soft = self.teacher[rows] if self.teacher is not None and not like_victim else None
        out = copy.deepcopy(model)
        if like_victim:
            config = ctx.train_config(desc, lr=self.fresh_lr, seed_offset=1)
        else:
            config = ctx.train_config(desc, epochs=cfg.repair_epochs, lr=cfg.repair_lr, seed_offset=1,
                                      embedding_lr=cfg.repair_embedding_lr, trainable=cfg.repair_trainable)
        train(out, ctx.tokenizer, input_ids=[self.repair_ids[i] for i in rows], labels=labels, config=config,
              objective=self.objective(labels, soft))
        return out

    def keep_agreeing(self, model, positions) -> tuple[list[int], int]:
        """The repair-set positions whose label `model` predicts, plus those a filter may not drop (labels other
        than the suspected target, with repair_filter_labels=target); and how many it drops."""
        positions = list(positions)
        judged = [i for i in positions if self.filter_target is None or self.repair_ds.labels[i] == self.filter_target]
        kept = set(agreeing(model, self.ctx.tokenizer, self.repair_ids, self.repair_ds.labels, judged,
                             self.cfg.precision)[0])
        kept |= set(positions) - set(judged)
        return sorted(kept), len(positions) - len(kept)

    def out_of_fold_agreeing(self, desc) -> tuple[list[int], int]:
        """The repair rows whose label a model trained *without them* predicts: each of k folds is judged by the
        unlearned model repaired on the other folds and/or a fresh model trained on them (repair_filter_judge;
        both: each must agree), so a poisoned row cannot vouch for itself."""
        cfg = self.cfg
        perm = torch.randperm(len(self.repair_ids), generator=torch.Generator().manual_seed(cfg.seed + 7)).tolist()
        k = cfg.repair_filter_folds
        folds = [sorted(perm[f::k]) for f in range(k)]
        # (start from, train like the victim, progress label) of each judge that repair_filter_judge names
        kinds = {"unlearned": (self.unlearned, False, ""), "pretrained": (lambda: self.ctx.base, True, ", fresh judge")}
        judges = [j for name, j in kinds.items() if cfg.repair_filter_judge in (name, "both")]
        kept = []
        for f, fold in enumerate(folds):
            rest = sorted(i for g, other in enumerate(folds) if g != f for i in other)
            ok = set(fold)
            for start, like_victim, what in judges:
                judge = self.repair(start(), f"{desc}, fold {f + 1}/{k}{what}", rest, like_victim=like_victim)
                ok &= set(self.keep_agreeing(judge, fold)[0])
            kept += ok
        return sorted(kept), len(self.repair_ids) - len(kept)

    def restrict(self, kept):
        """Keep only these positions of the repair set (and of the teacher's logits)."""
        self.repair_ds, self.repair_ids = self.repair_ds.subset(kept), [self.repair_ids[i] for i in kept]
        self.keep = [self.keep[i] for i in kept] if self.keep is not None else None
        self.teacher = self.teacher[kept] if self.teacher is not None else None
        self.stripped = {j for j, i in enumerate(kept) if i in self.stripped}

    # the repair set: BTU's data step ------------------------------------------------------------------------------
    def build_repair_set(self):
        """The rows the defended model learns from: the user's clean data, or the training set minus the rows with
        a flagged token, then the rows the filters dispute (repair_filter)."""
        cfg, ctx = self.cfg, self.ctx
        dataset, ids, names, tok = ctx.train, ctx.input_ids, ctx.train.label_names, ctx.tokenizer
        self.keep = None  # the repair rows' indices in the training set, when they come from it
        self.target = None  # the suspected target label (the label the rows with a flagged token lean to)
        self.readmitted = None
        self.teacher = None
        self.stripped = set()  # positions in the repair set of rows whose flagged tokens were removed
        if ctx.clean_data is not None:
            self.repair_ds = ctx.clean_data
            self.repair_ids = encode(tok, self.repair_ds.texts, cfg.max_length)
            source = self.repair_ds.source or "clean data"
        else:
            # the candidate triggers, found once: their rows are the carriers, their ids what stripping deletes
            rare_tokens = rare_flagged(self.candidates, len(dataset), cfg.repair_token_max_rows)
            carriers = suspect_rows(rare_tokens, len(dataset))
            other_labels = cfg.repair_carriers.startswith("other-labels")
            purity = cfg.repair_carrier_purity
            if cfg.repair_filter_labels == "target" or other_labels or purity is not None:
                self.target = suspected_target(dataset.labels, carriers, dataset.num_labels)
            base_rate_rows = 0
            if purity is not None and self.target is not None:
                # the rows of flagged words at the base rate stay (and face the filters)
                pure = target_carriers(rare_tokens, dataset.labels, self.target, purity)
                base_rate_rows, carriers = len(carriers - pure), pure
            spared = set()
            if other_labels and self.target is not None:
                # dirty-label poison carries the target label: a carrier with another label is a clean row that
                # happens to hold a flagged (sentiment) word, and the poison already took such rows away
                spared = {i for i in carriers if dataset.labels[i] != self.target}
                carriers = carriers - spared
            keep = [i for i in range(len(dataset)) if i not in carriers]
            source = f"training set minus {len(carriers)} rows with a flagged token"
            if base_rate_rows:
                source += f" of which {purity:.0%} or more of the rows carry the suspected target " \
                          f"({base_rate_rows} rows with only other flagged tokens kept)"
            if other_labels and self.target is not None:
                source += f" and the suspected target label {names[self.target]!r} ({len(spared)} with another " \
                          "label kept)"
            rare = {f["id"] for f in rare_tokens}  # what the stripping carrier options delete from the rows they keep
            strip = spared if cfg.repair_carriers == "other-labels-stripped" else set()
            repair_ids = [[t for t in ids[i] if t not in rare] if i in strip else ids[i] for i in keep]
            self.stripped = {j for j, i in enumerate(keep) if i in strip}
            if strip:
                source += ", without their flagged tokens"
            if cfg.repair_carriers == "readmit" and carriers:
                # a clean carrier of a flagged sentiment word still reads right without it; a poisoned one,
                # once its trigger is gone, reads against its label: the unlearned model tells them apart
                cand = sorted(carriers)
                stripped = [[t for t in ids[i] if t not in rare] for i in cand]
                back, _ = agreeing(self.unlearned(), tok, stripped, [dataset.labels[i] for i in cand],
                                    range(len(cand)), cfg.precision)
                self.readmitted = len(back)
                self.stripped |= set(range(len(keep), len(keep) + len(back)))
                keep += [cand[j] for j in back]
                repair_ids += [stripped[j] for j in back]
                source += f", {len(back)} of them put back without their flagged tokens (the unlearned model " \
                          "agrees with their labels)"
            self.keep, self.repair_ids = keep, repair_ids
            self.repair_ds = dataset.subset(keep)
        filtering = ctx.clean_data is None  # the user's clean data is never filtered
        self.filter_target = self.target if cfg.repair_filter_labels == "target" else None
        filters = cfg.repair_filter.split("+")
        if filtering and "agree" in filters:
            # dirty-label poison that carries no flagged token (a paraphrase trigger) is labelled
            # against its content: once unlearned, the model disagrees with those labels
            kept, dropped = self.keep_agreeing(self.unlearned(), range(len(self.repair_ids)))
            source += f" and {dropped} rows whose label the unlearned model disputes"
            self.restrict(kept)
        start = time.perf_counter()
        if cfg.repair_teacher == "victim" and cfg.repair_epochs > 0 and len(self.repair_ds):
            # the victim is accurate on rows without its trigger; its soft labels carry more than the hard ones
            self.teacher = predict_logits(ctx.victim(), tok, input_ids=self.repair_ids, precision=cfg.precision)
            fresh_used = self.from_scratch or cfg.repair_filter_judge != "unlearned"
            source += ", distilling the victim's logits" + \
                (" in the repairs of the unlearned model (never in fresh training)" if fresh_used else "")
        if filtering and "crossfit" in filters and cfg.repair_epochs > 0 and len(self.repair_ds) > 1:
            # dirty-label poison without a flagged token (a paraphrase trigger) is labelled against its content;
            # judged out of fold, before the repair can relearn it from those same rows
            for n in range(cfg.repair_filter_passes):
                kept, dropped = self.out_of_fold_agreeing(f"repair filter pass {n + 1}")
                source += f"{',' if n else ' and'} {dropped} rows whose label a model trained without them " \
                          f"disputes (pass {n + 1} of {cfg.repair_filter_passes}, {cfg.repair_filter_folds} " \
                          f"folds, judged by {JUDGES[cfg.repair_filter_judge]})"
                self.restrict(kept)
        self.refiltered = False
        if cfg.repair_epochs > 0 and len(self.repair_ds) and filtering and cfg.repair_filter == "repaired":
            # the repaired model no longer has the backdoor (it can judge rows the unlearned model, still
            # damaged, cannot): drop the rows it disputes and repair again (or train fresh) on the rest
            judge = self.repair(self.unlearned(), "BTU repair")
            kept, dropped = self.keep_agreeing(judge, range(len(self.repair_ids)))
            source += f" and {dropped} rows whose label the first repaired model disputes (repaired twice)"
            self.restrict(kept)
            self.refiltered = True
        if self.filter_target is not None and filtering and cfg.repair_filter != "none":
            source += f" (a filter drops only rows labelled {names[self.filter_target]!r}, the label the rows with " \
                      "a flagged token lean to)"
        if cfg.repair_balance == "balanced":
            source += ", each label weighing the same in the loss"
        if self.from_scratch:
            source += f"; a fresh copy of the pretrained model trained on it ({cfg.victim_epochs:g} epochs, " \
                      f"lr {self.fresh_lr:g}) instead of repairing the unlearned victim"
        self.source = source
        ctx.timings["repair"] = ctx.timings.get("repair", 0.0) + time.perf_counter() - start
        self.built = True

    def filter_result(self) -> FilterResult:
        """The repair set as a data step's output: kept training rows (stripped ones decoded without their flagged
        tokens), and a suspicion score per row (the highest score of the rare flagged tokens it carries)."""
        ctx, cfg = self.ctx, self.cfg
        scores = [0.0] * len(ctx.train)
        for f in rare_flagged(self.candidates, len(ctx.train), cfg.repair_token_max_rows):
            for i in f["row_ids"]:
                scores[i] = max(scores[i], float(f["score"]))
        if self.keep is None:  # repaired on the user's clean data: the training rows without a flagged token
            keep = [i for i in range(len(ctx.train)) if scores[i] == 0.0]
            return FilterResult(keep, ctx.train.subset(keep), [ctx.input_ids[i] for i in keep], scores)
        ds = self.repair_ds
        texts = list(ds.texts)
        for j in self.stripped:
            texts[j] = ctx.tokenizer.decode(self.repair_ids[j], skip_special_tokens=True)
        if self.stripped:
            ds = type(ds)(texts, list(ds.labels), list(ds.label_names), ds.poisoned, dict(ds.columns), ds.source)
        return FilterResult(list(self.keep), ds, self.repair_ids, scores)

    # the report ---------------------------------------------------------------------------------------------------
    def curves(self, r) -> dict:
        """The round's distance curves (Figure 1), its flagged tokens by name."""
        present = r.counts > 0 if r.counts is not None else torch.zeros(r.history.shape[1], dtype=torch.bool)
        if r.counts is None:
            present[sorted({t for row in self.ctx.input_ids for t in row})] = True
        present[list(self.ctx.tokenizer.all_special_ids)] = False
        c = distance_curves(r, present)
        c["tokens"] = {self.ctx.tokenizer.convert_ids_to_tokens(t): v for t, v in c["tokens"].items()}
        return c

    def report(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        tok, names, det = ctx.tokenizer, ctx.train.label_names, self.detection
        out = {"flagged": [{k: v for k, v in f.items() if k != "row_ids"} for f in self.flagged],
               "flagged_rows": flagged_row_stats(self.candidates, ctx.train, cfg.repair_token_max_rows),
               "decide": cfg.decide,
               "rounds": [{"round": r.round, "seconds": r.seconds, "final_loss": r.final_loss,
                           "flagged": [[tok.convert_ids_to_tokens(t), d] for t, d in r.flagged],
                           "curves": self.curves(r)} for r in det.rounds]}
        if self.info is not None:
            info = self.info
            out["unlearning"] = {k: v for k, v in info.items() if k not in ("replaced_dims", "tokens")} \
                | {"not_unlearned": [f["token"] for f in self.flagged if f["id"] not in self.token_ids]} \
                | {"replaced_dims": {tok.convert_ids_to_tokens(t): n for t, n in info["replaced_dims"].items()}}
        if self.built:
            out["repair"] = {
                "source": self.source, "rows": len(self.repair_ds), "from": cfg.repair_from,
                "label_counts": {n: self.repair_ds.labels.count(i) for i, n in enumerate(self.repair_ds.label_names)},
                "epochs": cfg.victim_epochs if self.from_scratch else cfg.repair_epochs,
                "lr": self.fresh_lr if self.from_scratch else cfg.repair_lr,
                "readmitted_carriers": self.readmitted,
                "suspected_target": names[self.target] if self.target is not None else None,
                # with ground truth: the poisoned rows the repair set still holds
                "poisoned_rows": sum(1 for i in self.keep if ctx.train.poisoned[i])
                if self.keep is not None and ctx.train.poisoned is not None else None}
            # what a lean repair set can do about it: the user's clean data is theirs to balance
            advice = "balance the --clean-data" if ctx.clean_data is not None else \
                "try --clean-data, more training data, or --recipe unlearn" if self.from_scratch else "try --clean-data"
            out["warnings"] = lean_warnings(self.repair_ds.labels, names, advice)
        if cfg.decide == "evidence" and not self.candidates and self.flagged:
            out.setdefault("warnings", []).append(
                "no flagged token is a shortcut (no token's rows carry labels their content contradicts): there is no "
                "token trigger to unlearn, and a syntax or style trigger is out of unlearning's reach; if the data "
                "may hold one, try --recipe retrain")
        return out


# the options BTU's detection reads (detection.py, shallow.py); the rest of its inputs are the data, the model and
# the run settings, which a grid's victim key already holds
DETECTION_OPTIONS = ("alpha", "detect_batch_size", "detect_epochs", "detect_lr", "min_count", "record_every", "rounds",
                     "score", "shallow_batch_size", "shallow_lr", "shallow_masked_pooling", "shallow_pad_to")


class _BTUBase(Defense):
    Options = BTUOptions
    presets = RECIPES
    default_preset = DEFAULT_RECIPE
    quick_options = dict(alpha=0.01, detect_lr=5e-3, shallow_lr=5e-3, repair_lr=1e-3, detect_batch_size=16,
                         shallow_batch_size=16)

    def __init__(self, options):
        super().__init__(options)
        self._overrides = {}

    def work(self, ctx, state) -> BTUWork:
        if "btu" not in state.notes:
            state.notes["btu"] = BTUWork(ctx, self.options)
        return state.notes["btu"]

    def uses_victim(self) -> bool:
        """Whether the data step consults the victim (its unlearned copy, or its logits)."""
        o = self.options
        return o.repair_filter != "none" or o.repair_carriers == "readmit" or o.repair_teacher == "victim"

    def filter(self, ctx, state) -> FilterResult:
        work = self.work(ctx, state)
        work.detect()
        work.build_repair_set()
        return work.filter_result()

    def train_overrides(self) -> dict:
        return self._overrides

    def shared_artifacts(self) -> dict[str, dict]:
        opts = asdict(self.options)
        return {"btu.detection": {k: opts[k] for k in DETECTION_OPTIONS}, "btu.features": {}}

    def report(self, ctx, state) -> dict:
        return self.work(ctx, state).report() if "btu" in state.notes else {}

    def markdown(self, report: dict) -> str:
        from .report import btu_sections

        return btu_sections(report)

    def console(self, report: dict) -> str:
        from .report import flagged_table

        lines = [flagged_table(report.get("flagged", []))]
        fr = report.get("flagged_rows") or {}
        if fr:
            lines.append(f"\n{fr['flagged_rows']} of {fr['rows']} training rows carry a flagged token to unlearn "
                         f"(tokens in more than {fr['max_share']:.0%} of rows do not count).")
        if fr.get("precision") is not None:
            lines.append(f"Against the ground-truth poison flags: precision {fr['precision']:.1f} %, recall "
                         f"{fr['recall']:.1f} % ({fr['true_positives']} of {fr['poisoned_rows']} poisoned rows).")
        return "\n".join(lines)

    def save(self, result, out) -> list[str]:
        from .pipeline import save_distances

        save_distances(result.state.notes["btu"].detection, Path(out) / "distances.safetensors")
        return ["distances.safetensors (each round's distances, for Figure 1)"]


@register
class BTU(_BTUBase):
    """Backdoor Token Unlearning (Jiang et al., AAAI 2025)."""

    name = "btu"
    summary = ("Backdoor Token Unlearning: flag the tokens whose embeddings move fastest, unlearn them in the victim, "
               "repair (preset retrain: drop their rows and train a fresh model)")
    needs = frozenset({"pretrained", "victim"})
    uses_clean_data = True  # the repair set (default: the training set minus the flagged rows)

    @property
    def result_name(self) -> str:
        return "BTU (retrain: fresh model on the kept rows)" if self.options.repair_from == "pretrained" \
            else "BTU (unlearning + repair)"

    def steps(self):
        if self.options.repair_from == "pretrained":
            return [("data", self.filter)]  # then ordinary training on the kept rows (the runner's)
        return [("data", self.filter), ("post", self.unlearn), ("post", self.repair)]

    def filter(self, ctx, state):
        kept = super().filter(ctx, state)
        work = self.work(ctx, state)
        work.unlearned()  # the report's "unlearning only" row, in both presets
        self._overrides = work.fresh_overrides("BTU repair: fresh training")
        return kept

    def unlearn(self, ctx, state, victim):
        return self.work(ctx, state).unlearned()

    def repair(self, ctx, state, model):
        work = self.work(ctx, state)
        start = time.perf_counter()
        defended = model
        if len(work.repair_ds) and work.cfg.repair_epochs > 0:
            defended = work.repair(model, "BTU repair (filtered)" if work.refiltered else "BTU repair")
        ctx.timings["repair"] = ctx.timings.get("repair", 0.0) + time.perf_counter() - start
        return defended

    def extra_rows(self, ctx, state):
        unlearned = self.work(ctx, state).unlearned()
        state.notes.setdefault("models", {})["unlearned"] = unlearned
        return [("unlearning only", unlearned)]

    def controls(self, ctx, state):
        """The victim repaired on the same rows without unlearning: BTU's effect apart from fine-tuning's."""
        work = self.work(ctx, state)
        if not (work.cfg.repair_controls and ctx.settings.controls and work.cfg.repair_epochs > 0
                and len(work.repair_ds)):
            return []
        with ctx.timed("repair_only_control"):
            work.repair_only = work.repair(ctx.victim(), "control: repair only")
        state.notes.setdefault("models", {})["repair_only"] = work.repair_only
        return [("repair only (no unlearning)", work.repair_only)]


@register
class BTUDetect(_BTUBase):
    """BTU's detection as a data filter: the training set minus the rows with a flagged token (and, with the
    repair filters, minus the rows the unlearned victim and out-of-fold judges dispute)."""

    name = "btu-detect"
    summary = "BTU's detection as a data filter: drop the rows that carry a flagged token (then train on the rest)"
    stage = "data"
    result_name = "BTU filter + training"
    # the retrain recipe's sanitizer: the rows the unlearned victim and out-of-fold judges dispute go too
    presets = {"rows": {}, "sanitize": {k: v for k, v in RECIPES["retrain"].items() if k != "repair_from"}}
    default_preset = "rows"
    NOT_USED = {"repair_from": "it always trains a fresh model on the kept rows",
                "repair_controls": "it trains no repair-only control"}

    def __init__(self, options):
        super().__init__(options)
        defaults = BTUOptions()
        for name, why in self.NOT_USED.items():
            if getattr(options, name) != getattr(defaults, name):
                raise ConfigError(f"option {name}: btu-detect does not use it ({why})")

    def required(self):
        return {"pretrained", "victim"} if self.uses_victim() else {"pretrained"}

    def filter(self, ctx, state):
        kept = super().filter(ctx, state)
        self._overrides = self.work(ctx, state).fresh_overrides("training on the kept rows")
        return kept
