"""BTU end to end: detect on the (possibly poisoned) training set, train the victim
normally, unlearn the flagged tokens, repair with clean data, and report the controls
(unlearning only, repair only) so BTU's effect is not confused with fine-tuning's."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from ...data import TextDataset, load_source
from ...training import TrainConfig, balanced_class_weights, evaluate, predict, predict_logits, train
from ...training.batching import encode
from ...training.seeding import seed_everything
from ..base import register_defense
from .config import DEFAULT_RECIPE, BTUConfig
from .detection import DetectionResult, detect
from .unlearning import unlearn_rows

JUDGES = {"unlearned": "the unlearned model repaired on the other folds",
          "pretrained": "a fresh model trained on the other folds",
          "both": "the unlearned model repaired and a fresh model trained on the other folds, each"}


@dataclass
class BTUResult:
    model: object  # the defended classifier (unlearned + repaired)
    tokenizer: object
    flagged: list  # one dict per flagged token: id, token, rounds, rows, poisoned_rows
    detection: DetectionResult
    report: dict
    config: BTUConfig
    models: dict = field(default_factory=dict)  # victim, unlearned, repair_only (when kept)


def rows_containing(input_ids, token_ids) -> dict[int, list[int]]:
    wanted = set(token_ids)
    out = {t: [] for t in token_ids}
    for r, row in enumerate(input_ids):
        for t in wanted.intersection(row):
            out[t].append(r)
    return out


def describe_flagged(detection: DetectionResult, tokenizer, input_ids, dataset: TextDataset) -> list[dict]:
    """Per flagged token: its string, rank and distance per round, the rows that carry it."""
    ids = detection.token_ids
    carriers = rows_containing(input_ids, ids)
    flags = dataset.poisoned
    out = []
    for t in ids:
        rounds = {}
        for r in detection.rounds:
            for rank, (tid, score) in enumerate(r.flagged, 1):
                if tid == t:
                    rounds[r.round] = {"rank": rank, "distance": float(r.distances[t]), "score": score}
        rows = carriers[t]
        out.append({"id": t, "token": tokenizer.convert_ids_to_tokens(t), "rounds": rounds,
                    "score": max(v["score"] for v in rounds.values()), "rows": len(rows),
                    "poisoned_rows": sum(1 for r in rows if flags[r]) if flags is not None else None,
                    "row_ids": rows})
    return out


def rare_flagged(flagged: list[dict], n_rows: int, max_share: float = 1.0) -> list[dict]:
    """The flagged tokens found in at most max_share of the rows: the candidate triggers.

    A token in most rows (".", "the") cannot be the trigger of a poison rate below max_share
    without poisoning most of the data.
    """
    return [f for f in flagged if f["rows"] <= max_share * n_rows]


def suspect_rows(flagged: list[dict], n_rows: int, max_share: float = 1.0) -> set[int]:
    """Rows that carry a flagged token found in at most max_share of the rows (`rare_flagged`)."""
    return {i for f in rare_flagged(flagged, n_rows, max_share) for i in f["row_ids"]}


def target_carriers(flagged: list[dict], labels, target: int, purity: float, max_share: float = 1.0) -> set[int]:
    """The rows of the rare flagged tokens (`rare_flagged`) of which at least `purity` carry the `target` label.
    Dirty-label poison all carries the target, so a trigger's rows do; a frequent word's (`film`) are at the base
    rate, and on a small set they are most of the target label."""
    pure = [f for f in rare_flagged(flagged, len(labels), max_share)
            if sum(labels[i] == target for i in f["row_ids"]) >= purity * len(f["row_ids"])]
    return {i for f in pure for i in f["row_ids"]}


def flagged_row_stats(flagged: list[dict], dataset: TextDataset, max_share: float = 1.0) -> dict:
    """How many rows carry a flagged token (of at most max_share of the rows); with ground
    truth, precision and recall of those rows."""
    rows = suspect_rows(flagged, len(dataset), max_share)
    stats = {"flagged_rows": len(rows), "rows": len(dataset), "max_share": max_share}
    if dataset.poisoned is not None:
        poisoned = {i for i, p in enumerate(dataset.poisoned) if p}
        hit = len(rows & poisoned)
        stats.update(poisoned_rows=len(poisoned), true_positives=hit,
                     precision=100.0 * hit / len(rows) if rows else float("nan"),
                     recall=100.0 * hit / len(poisoned) if poisoned else float("nan"))
    return stats


def suspected_target(labels, suspects, num_labels: int) -> int | None:
    """The label most over-represented among the suspect rows (carriers of a flagged token) against its share
    of all rows: dirty-label poison all carries the attacker's target label. None without suspects."""
    if not suspects:
        return None
    total, among = [0] * num_labels, [0] * num_labels
    for i, y in enumerate(labels):
        total[y] += 1
        among[y] += i in suspects
    return max(range(num_labels), key=lambda c: among[c] / total[c] if total[c] else -1.0)


def lean_warnings(labels, label_names, advice: str) -> list[str]:
    """A warning (ending in `advice`) for each label with under half a balanced share of the repair rows: a model
    trained on them leans away from that label (retrain on 1,500 Rotten Tomatoes rows kept 57 target rows against
    509, and its fresh model called every row the other label)."""
    n, counts = len(labels), [labels.count(i) for i in range(len(label_names))]
    return [f"the repair set holds {c} {name!r} rows of {n} (under half a balanced share): the defended model will "
            f"lean away from {name!r}; {advice}" for name, c in zip(label_names, counts) if c < 0.5 * n / len(counts)]


def _agreeing(model, tok, ids, labels, rows, precision) -> tuple[list[int], int]:
    """The rows (indices into ids/labels) whose label `model` predicts, and how many it disputes."""
    rows = list(rows)
    preds = predict(model, tok, input_ids=[ids[i] for i in rows], precision=precision)
    kept = [i for i, p in zip(rows, preds) if p == labels[i]]
    return kept, len(rows) - len(kept)


def _as_dataset(data, role, label_names=None) -> TextDataset | None:
    if data is None or isinstance(data, TextDataset):
        return data
    return load_source(data, role, label_names)


def scan(train_data, model="minilm", config: BTUConfig | None = None, tokenizer=None):
    """Detection only: (flagged tokens, detection result, row stats)."""
    from ...models import load_classifier

    cfg = config or BTUConfig()
    dataset = _as_dataset(train_data, "train")
    seed_everything(cfg.seed)
    base, tok = (model, tokenizer) if tokenizer is not None else load_classifier(model, label_names=dataset.label_names)
    ids = encode(tok, dataset.texts, cfg.max_length)
    det = detect(base, tok, ids, dataset.labels, dataset.num_labels, cfg)
    flagged = describe_flagged(det, tok, ids, dataset)
    return flagged, det, flagged_row_stats(flagged, dataset, cfg.repair_token_max_rows)


def defend(train_data, model="minilm", clean_data=None, test=None, poison_test=None, target=None,
           config: BTUConfig | None = None, victim=None, keep_models: bool = False,
           allow_pickle=False, trust_remote_code=False, detection: DetectionResult | None = None) -> BTUResult:
    """Train a clean classifier from possibly poisoned `train_data` with BTU.

    train_data / clean_data / test / poison_test: TextDatasets or data sources (file, folder,
    built-in name). poison_test holds non-target rows carrying the trigger; with `target`
    (a label name or index) the report has ASR. victim: an already trained backdoored model
    folder (or model object) to reuse instead of training one. Without clean_data, the repair
    set is the training set minus the rows that contain a flagged token (tokens in more than
    cfg.repair_token_max_rows of the rows are not treated as triggers there). detection: reuse
    an earlier DetectionResult of the same data and model (ablations over stage 2). config=None runs the
    DEFAULT_RECIPE (unlearn: BTUConfig(), the paper's BTU).
    """
    from ...models import load_classifier

    cfg = config or BTUConfig.recipe(DEFAULT_RECIPE)
    timings = {}
    dataset = _as_dataset(train_data, "train")
    names = dataset.label_names
    test_ds = _as_dataset(test, "test", names)
    ptest_ds = _as_dataset(poison_test, "test", names)
    target_id = dataset.label_id(target) if target is not None and ptest_ds is not None else None
    seed_everything(cfg.seed)
    base, tok = load_classifier(model, label_names=names, allow_pickle=allow_pickle,
                                trust_remote_code=trust_remote_code)
    pretrained = base.get_input_embeddings().weight.detach().float().cpu().clone()
    ids = encode(tok, dataset.texts, cfg.max_length)

    # stage 1: detection
    det = detection if detection is not None else detect(base, tok, ids, dataset.labels, dataset.num_labels, cfg)
    timings["detection"] = det.seconds
    flagged = describe_flagged(det, tok, ids, dataset)
    token_ids = det.token_ids
    if cfg.unlearn_token_max_rows is not None:
        # a token in most rows (".", "the") moves because every batch pushes it, not because it is a trigger
        token_ids = [f["id"] for f in flagged if f["rows"] <= cfg.unlearn_token_max_rows * len(dataset)]

    def tcfg(epochs, lr, desc, seed_offset, embedding_lr=None, trainable="all", class_weights=None):
        return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=lr, embedding_lr=embedding_lr,
                           trainable=trainable, max_length=cfg.max_length, precision=cfg.precision,
                           class_weights=class_weights,
                           seed=cfg.seed + seed_offset, progress=cfg.progress, desc=desc,
                           distill_weight=cfg.repair_distill_weight, distill_temperature=cfg.repair_distill_temperature)

    def measure(m):
        return evaluate(m, tok, test_ds, ptest_ds, target_id, precision=cfg.precision) if test_ds or ptest_ds else {}

    # the victim: trained normally on the possibly poisoned data
    if victim is None:
        vmodel = copy.deepcopy(base)
        vres = train(vmodel, tok, input_ids=ids, labels=dataset.labels,
                     config=tcfg(cfg.victim_epochs, cfg.lr, "victim training", 0))
        timings["victim_training"] = vres.seconds
        timings["victim_epoch"] = vres.seconds / max(cfg.victim_epochs, 1e-9)
    else:
        vmodel = victim if not isinstance(victim, str) else load_classifier(victim, allow_pickle=allow_pickle)[0]
        timings["victim_training"] = 0.0
    from_scratch = cfg.repair_from == "pretrained"  # the defended model is trained fresh on the repair set
    fresh_lr = cfg.lr if cfg.fresh_lr is None else cfg.fresh_lr
    # untouched (the victim trained on a copy): kept for fresh training, of the defended model or of judges
    fresh = base if from_scratch or cfg.repair_filter_judge != "unlearned" else None
    del base
    rows = [{"model": "no defense", **measure(vmodel)}]

    # stage 2: unlearning
    unlearned = copy.deepcopy(vmodel)
    weight = unlearned.get_input_embeddings().weight
    changed = det.round(1).trained_embeddings if cfg.change_from == "round1" else None
    info = unlearn_rows(weight.data, pretrained, token_ids, cfg.unlearn, cfg.threshold, cfg.padding,
                        tok.pad_token_id, changed=changed, noise_std=cfg.noise_std, seed=cfg.seed)
    rows.append({"model": "unlearning only", **measure(unlearned)})

    # repair on clean data
    keep = None  # the repair rows' indices in the training set, when they come from it
    target = None  # the suspected target label (the label the rows with a flagged token lean to), when used
    readmitted = None
    if clean_data is not None:
        repair_ds = _as_dataset(clean_data, "train", names)
        repair_ids = encode(tok, repair_ds.texts, cfg.max_length)
        repair_source = repair_ds.source or "clean data"
    else:
        # the candidate triggers, found once: their rows are the carriers, their ids what stripping deletes
        rare_tokens = rare_flagged(flagged, len(dataset), cfg.repair_token_max_rows)
        carriers = suspect_rows(rare_tokens, len(dataset))
        other_labels = cfg.repair_carriers.startswith("other-labels")
        purity = cfg.repair_carrier_purity
        if cfg.repair_filter_labels == "target" or other_labels or purity is not None:
            target = suspected_target(dataset.labels, carriers, dataset.num_labels)
        base_rate_rows = 0
        if purity is not None and target is not None:
            # the rows of flagged words at the base rate stay (and face the filters)
            pure = target_carriers(rare_tokens, dataset.labels, target, purity)
            base_rate_rows, carriers = len(carriers - pure), pure
        spared = set()
        if other_labels and target is not None:
            # dirty-label poison carries the target label: a carrier with another label is a clean row that
            # happens to hold a flagged (sentiment) word, and the poison already took such rows away
            spared = {i for i in carriers if dataset.labels[i] != target}
            carriers = carriers - spared
        keep = [i for i in range(len(dataset)) if i not in carriers]
        repair_source = f"training set minus {len(carriers)} rows with a flagged token"
        if base_rate_rows:
            repair_source += f" of which {purity:.0%} or more of the rows carry the suspected target " \
                             f"({base_rate_rows} rows with only other flagged tokens kept)"
        if other_labels and target is not None:
            repair_source += f" and the suspected target label {names[target]!r} ({len(spared)} with another " \
                             "label kept)"
        rare = {f["id"] for f in rare_tokens}  # what the stripping carrier options delete from the rows they keep
        strip = spared if cfg.repair_carriers == "other-labels-stripped" else set()
        repair_ids = [[t for t in ids[i] if t not in rare] if i in strip else ids[i] for i in keep]
        if strip:
            repair_source += ", without their flagged tokens"
        if cfg.repair_carriers == "readmit" and carriers:
            # a clean carrier of a flagged sentiment word still reads right without it; a poisoned one,
            # once its trigger is gone, reads against its label: the unlearned model tells them apart
            cand = sorted(carriers)
            stripped = [[t for t in ids[i] if t not in rare] for i in cand]
            back, _ = _agreeing(unlearned, tok, stripped, [dataset.labels[i] for i in cand], range(len(cand)),
                                cfg.precision)
            readmitted = len(back)
            keep += [cand[j] for j in back]
            repair_ids += [stripped[j] for j in back]
            repair_source += f", {len(back)} of them put back without their flagged tokens (the unlearned model " \
                             "agrees with their labels)"
        repair_ds = dataset.subset(keep)
    teacher = None
    filtering = clean_data is None  # the user's clean data is never filtered
    filter_target = target if cfg.repair_filter_labels == "target" else None  # the only label a filter may drop

    def repair(model, desc, rows=None, like_victim=False):
        """A copy of `model` fine-tuned on the repair rows (all, or these positions in the repair set),
        distilling `teacher` when there is one; like_victim: trained like the victim (its epochs, at fresh_lr) and
        never distilling it, whose logits would teach a fresh model the victim's backdoor back."""
        rows = list(range(len(repair_ids))) if rows is None else rows
        labels = [repair_ds.labels[i] for i in rows]
        weights = balanced_class_weights(labels, dataset.num_labels) if cfg.repair_balance == "balanced" else None
        out = copy.deepcopy(model)
        config = tcfg(cfg.victim_epochs, fresh_lr, desc, 1, class_weights=weights) if like_victim else \
            tcfg(cfg.repair_epochs, cfg.repair_lr, desc, 1, cfg.repair_embedding_lr, cfg.repair_trainable, weights)
        soft = teacher[rows] if teacher is not None and not like_victim else None
        train(out, tok, input_ids=[repair_ids[i] for i in rows], labels=labels, teacher_logits=soft, config=config)
        return out

    def final_repair(desc):
        """The defended model: the unlearned victim repaired, or (repair_from=pretrained) a fresh model."""
        if from_scratch:
            return repair(fresh, f"{desc}: fresh training", like_victim=True)
        return repair(unlearned, desc)

    def keep_agreeing(model, positions) -> tuple[list[int], int]:
        """The repair-set positions whose label `model` predicts, plus those a filter may not drop (labels other
        than the suspected target, with repair_filter_labels=target); and how many it drops."""
        positions = list(positions)
        judged = [i for i in positions if filter_target is None or repair_ds.labels[i] == filter_target]
        kept = set(_agreeing(model, tok, repair_ids, repair_ds.labels, judged, cfg.precision)[0])
        kept |= set(positions) - set(judged)
        return sorted(kept), len(positions) - len(kept)

    def out_of_fold_agreeing(desc) -> tuple[list[int], int]:
        """The repair rows whose label a model trained *without them* predicts: each of k folds is judged by
        the unlearned model repaired on the other folds and/or a fresh model trained on them (repair_filter_judge;
        both: each must agree), so a poisoned row cannot vouch for itself."""
        perm = torch.randperm(len(repair_ids), generator=torch.Generator().manual_seed(cfg.seed + 7)).tolist()
        k = cfg.repair_filter_folds
        folds = [sorted(perm[f::k]) for f in range(k)]
        # (start from, train like the victim, progress label) of each judge that repair_filter_judge names
        kinds = {"unlearned": (unlearned, False, ""), "pretrained": (fresh, True, ", fresh judge")}
        judges = [j for name, j in kinds.items() if cfg.repair_filter_judge in (name, "both")]
        kept = []
        for f, fold in enumerate(folds):
            rest = sorted(i for g, other in enumerate(folds) if g != f for i in other)
            ok = set(fold)
            for start, like_victim, what in judges:
                judge = repair(start, f"{desc}, fold {f + 1}/{k}{what}", rest, like_victim=like_victim)
                ok &= set(keep_agreeing(judge, fold)[0])
            kept += ok
        return sorted(kept), len(repair_ids) - len(kept)

    def restrict(kept):
        """Keep only these positions of the repair set (and of the teacher's logits)."""
        nonlocal repair_ds, repair_ids, keep, teacher
        repair_ds, repair_ids, keep = repair_ds.subset(kept), [repair_ids[i] for i in kept], [keep[i] for i in kept]
        teacher = teacher[kept] if teacher is not None else None

    filters = cfg.repair_filter.split("+")
    if filtering and "agree" in filters:
        # dirty-label poison that carries no flagged token (a paraphrase trigger) is labelled
        # against its content: once unlearned, the model disagrees with those labels
        kept, dropped = keep_agreeing(unlearned, range(len(repair_ids)))
        repair_source += f" and {dropped} rows whose label the unlearned model disputes"
        restrict(kept)
    start = time.perf_counter()
    defended = unlearned
    if cfg.repair_teacher == "victim" and cfg.repair_epochs > 0 and len(repair_ds):
        # the victim is accurate on rows without its trigger; its soft labels carry more than the hard ones
        teacher = predict_logits(vmodel, tok, input_ids=repair_ids, precision=cfg.precision)
        repair_source += ", distilling the victim's logits" + \
            (" in the repairs of the unlearned model (never in fresh training)" if fresh is not None else "")
    if filtering and "crossfit" in filters and cfg.repair_epochs > 0 and len(repair_ds) > 1:
        # dirty-label poison without a flagged token (a paraphrase trigger) is labelled against its content;
        # judged out of fold, before the repair can relearn it from those same rows
        for n in range(cfg.repair_filter_passes):
            kept, dropped = out_of_fold_agreeing(f"repair filter pass {n + 1}")
            repair_source += f"{',' if n else ' and'} {dropped} rows whose label a model trained without them " \
                             f"disputes (pass {n + 1} of {cfg.repair_filter_passes}, {cfg.repair_filter_folds} " \
                             f"folds, judged by {JUDGES[cfg.repair_filter_judge]})"
            restrict(kept)
    if cfg.repair_epochs > 0 and len(repair_ds) and filtering and cfg.repair_filter == "repaired":
        # the repaired model no longer has the backdoor (it can judge rows the unlearned model, still
        # damaged, cannot): drop the rows it disputes and repair again (or train fresh) on the rest
        judge = repair(unlearned, "BTU repair")
        kept, dropped = keep_agreeing(judge, range(len(repair_ids)))
        repair_source += f" and {dropped} rows whose label the first repaired model disputes (repaired twice)"
        restrict(kept)
        defended = final_repair("BTU repair (filtered)")
    elif len(repair_ds) and (cfg.repair_epochs > 0 or from_scratch):
        defended = final_repair("BTU repair")
    if filter_target is not None and filtering and cfg.repair_filter != "none":
        repair_source += f" (a filter drops only rows labelled {names[filter_target]!r}, the label the rows with a " \
                         "flagged token lean to)"
    if cfg.repair_balance == "balanced":
        repair_source += ", each label weighing the same in the loss"
    if from_scratch:
        repair_source += f"; a fresh copy of the pretrained model trained on it ({cfg.victim_epochs:g} epochs, " \
                         f"lr {fresh_lr:g}) instead of repairing the unlearned victim"
    timings["repair"] = time.perf_counter() - start
    # what a lean repair set can do about it: the user's clean data is theirs to balance
    lean_advice = "balance the --clean-data" if clean_data is not None else \
        "try --clean-data, more training data, or --recipe unlearn" if from_scratch else "try --clean-data"
    rows.append({"model": "BTU (unlearning + repair)", **measure(defended)})
    repair_only = None
    if cfg.repair_controls and cfg.repair_epochs > 0 and len(repair_ds):
        start = time.perf_counter()
        repair_only = repair(vmodel, "control: repair only")
        timings["repair_only_control"] = time.perf_counter() - start
        rows.append({"model": "repair only (no unlearning)", **measure(repair_only)})

    report = {
        "rows": rows,
        "flagged": [{k: v for k, v in f.items() if k != "row_ids"} for f in flagged],
        "flagged_rows": flagged_row_stats(flagged, dataset, cfg.repair_token_max_rows),
        "unlearning": {k: v for k, v in info.items() if k not in ("replaced_dims", "tokens")}
        | {"skipped_frequent": [f["token"] for f in flagged if f["id"] not in token_ids]}
        | {"replaced_dims": {tok.convert_ids_to_tokens(t): n for t, n in info["replaced_dims"].items()}},
        "repair": {"source": repair_source, "rows": len(repair_ds), "from": cfg.repair_from,
                   "label_counts": {n: repair_ds.labels.count(i) for i, n in enumerate(repair_ds.label_names)},
                   "epochs": cfg.victim_epochs if from_scratch else cfg.repair_epochs,
                   "lr": fresh_lr if from_scratch else cfg.repair_lr,
                   "readmitted_carriers": readmitted,
                   "suspected_target": names[target] if target is not None else None,
                   # with ground truth: the poisoned rows the repair set still holds
                   "poisoned_rows": sum(1 for i in keep if dataset.poisoned[i])
                   if keep is not None and dataset.poisoned is not None else None},
        "warnings": lean_warnings(repair_ds.labels, names, lean_advice),
        "rounds": [{"round": r.round, "seconds": r.seconds, "final_loss": r.final_loss,
                    "flagged": [[tok.convert_ids_to_tokens(t), d] for t, d in r.flagged]} for r in det.rounds],
        "timings": timings,
        "data": {"train": dataset.source, "rows": len(dataset), "test": getattr(test_ds, "source", None),
                 "poison_test": getattr(ptest_ds, "source", None),
                 "target": names[target_id] if target_id is not None else None},
        "config": cfg.to_dict(),
    }
    models = {"victim": vmodel, "unlearned": unlearned, "repair_only": repair_only} if keep_models else {}
    return BTUResult(defended, tok, flagged, det, report, cfg, models)


def save_distances(detection: DetectionResult, path) -> None:
    """Each round's distance history (records x vocabulary) as safetensors, for Figure 1."""
    from safetensors.torch import save_file

    tensors = {}
    for r in detection.rounds:
        tensors[f"round{r.round}.history"] = r.history.to(torch.float32).contiguous()
        tensors[f"round{r.round}.steps"] = torch.tensor(r.history_steps, dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


register_defense("btu", "train", BTUConfig, defend)
