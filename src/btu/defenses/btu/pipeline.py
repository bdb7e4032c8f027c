"""BTU's row rules (which rows carry a flagged token, the suspected target, lean warnings) and its Python entry
points: `defend` (the `btu` defense through the runner, configured by one BTUConfig) and `scan` (detection only).
The steps themselves live in defense.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...data import TextDataset, load_source
from ...training import predict
from ...training.batching import encode
from ...training.seeding import seed_everything
from .config import DEFAULT_RECIPE, BTUConfig
from .detection import DetectionResult, detect
from .evidence import decide_tokens, pooled_features


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


def decide_flagged(flagged: list[dict], cfg, features=None, labels=None, label_names=None) -> None:
    """Give each flagged token its `decision` (unlearn / keep) and `reason` and, with cfg.decide=evidence, its
    `evidence` (evidence.py; `features`: the pretrained model's pooled features of the rows); decide=all unlearns
    every one (the paper's)."""
    if cfg.decide == "all":
        for f in flagged:
            f["decision"], f["reason"] = "unlearn", "decide=all: every flagged token (the paper's)"
        return
    evidence = decide_tokens(flagged, features, labels, len(label_names), cfg.decide_dispute, cfg.decide_excess,
                             cfg.decide_purity, cfg.decide_z, seed=cfg.seed)
    for f in flagged:
        ev = {k: v for k, v in evidence[f["id"]].items() if k != "disputed_rows"}
        f["decision"], f["reason"] = ev.pop("decision"), ev.pop("reason")
        if "leans_to" in ev:
            ev["leans_to"] = label_names[ev["leans_to"]]
        f["evidence"] = ev


def shortcuts(flagged: list[dict]) -> list[dict]:
    """The flagged tokens decided to be shortcuts: what unlearning overwrites and whose rows the repair leaves out."""
    return [f for f in flagged if f.get("decision", "unlearn") == "unlearn"]


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


def agreeing(model, tok, ids, labels, rows, precision) -> tuple[list[int], int]:
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
    """Detection and the decisions: (flagged tokens, each with its decision, detection result, row stats of the
    tokens to unlearn)."""
    from ...models import load_classifier

    cfg = config or BTUConfig()
    dataset = _as_dataset(train_data, "train")
    seed_everything(cfg.seed)
    base, tok = (model, tokenizer) if tokenizer is not None else load_classifier(model, label_names=dataset.label_names)
    ids = encode(tok, dataset.texts, cfg.max_length)
    det = detect(base, tok, ids, dataset.labels, dataset.num_labels, cfg)
    flagged = describe_flagged(det, tok, ids, dataset)
    features = pooled_features(base, tok, ids, precision=cfg.precision) if cfg.decide == "evidence" else None
    decide_flagged(flagged, cfg, features, dataset.labels, dataset.label_names)
    return flagged, det, flagged_row_stats(shortcuts(flagged), dataset, cfg.repair_token_max_rows)


def run_settings(cfg: BTUConfig):
    """The runner's settings held in a BTUConfig (the victim's training, seed, precision, progress)."""
    from ..runner import RunSettings

    return RunSettings(epochs=cfg.victim_epochs, batch_size=cfg.batch_size, lr=cfg.lr, max_length=cfg.max_length,
                       precision=cfg.precision, seed=cfg.seed, progress=cfg.progress)


def defend(train_data, model="minilm", clean_data=None, test=None, poison_test=None, target=None,
           config: BTUConfig | None = None, victim=None, keep_models: bool = False,
           allow_pickle=False, trust_remote_code=False, detection: DetectionResult | None = None,
           dev=None) -> BTUResult:
    """Train a clean classifier from possibly poisoned `train_data` with BTU: `run_defense("btu", ...)` with the
    options and settings of one BTUConfig.

    train_data / clean_data / test / poison_test: TextDatasets or data sources (file, folder,
    built-in name). poison_test holds non-target rows carrying the trigger; with `target`
    (a label name or index) the report has ASR. victim: an already trained backdoored model
    folder (or model object) to reuse instead of training one. Without clean_data, the repair
    set is the training set minus the rows that contain a flagged token (tokens in more than
    cfg.repair_token_max_rows of the rows are not treated as triggers there). detection: reuse
    an earlier DetectionResult of the same data and model (ablations over stage 2). dev: a dev set, whose CACC
    each report row then has (choose on dev). config=None runs the DEFAULT_RECIPE (unlearn: BTUConfig(), the
    paper's BTU).
    """
    from ..runner import run_defense

    cfg = config or BTUConfig.recipe(DEFAULT_RECIPE)
    res = run_defense("btu", train_data, model, options=cfg.options(), settings=run_settings(cfg),
                      clean_data=clean_data, dev=dev, test=test, poison_test=poison_test, target=target, victim=victim,
                      allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                      artifacts={"btu.detection": detection} if detection is not None else None)
    work = res.state.notes["btu"]
    res.report["config"] = cfg.to_dict()
    models = {"victim": res.context.victim(), "unlearned": work.unlearned(), "repair_only": work.repair_only} \
        if keep_models else {}
    return BTUResult(res.model, res.tokenizer, work.flagged, work.detection, res.report, cfg, models)


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

