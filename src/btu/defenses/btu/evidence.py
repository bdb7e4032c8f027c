"""Why a flagged token moved: because the task needs it, or because a shortcut does.

Detection flags the tokens whose embeddings move fastest. On a task decided by a few words (toxicity, spam,
topics) those words move as fast as a trigger, and unlearning them costs the task. The evidence that tells them
apart is in the training set itself: a dirty-label trigger's rows all carry the target label, and their content
says otherwise. A judge that never saw a token's rows reads their content: it disputes a trigger's labels and
agrees with a task word's.

The judge is a logistic regression on the *pretrained* model's mean-pooled features (no fine-tuning, so it
learns no shortcut from the poison; seconds to fit), trained on every row that lacks the token. Its dispute
rate on the token's rows (those with the label they lean to) is compared with its out-of-fold dispute rate on
ordinary rows of that label: the excess is what the token's rows have that ordinary rows do not.
"""

from __future__ import annotations

import math

import torch

from ...training.evaluate import forward_rows

DECISIONS = ("unlearn", "keep")
# a token whose rows are most of the label they lean to leaves a judge fitted without them too little of that label
# to read it (a task decided by one word per label); a dirty-label trigger at the rates studied is well under half
MAX_LABEL_SHARE = 0.5


def pooled_features(model, tokenizer, input_ids, batch_size: int = 128, precision: str = "auto") -> torch.Tensor:
    """Mean of the encoder's last hidden states over each row's real tokens (rows x hidden, fp32): what a
    sentence encoder such as all-MiniLM is trained to make meaningful."""
    encoder = getattr(model, "base_model", model)

    def mean_pooled(_, ids, mask):
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    return forward_rows(model, tokenizer, input_ids, mean_pooled, batch_size, precision)


def standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0).clamp(min=1e-6)


def fit_judge(x: torch.Tensor, y: torch.Tensor, num_labels: int, l2: float = 1e-2, iters: int = 100) -> torch.Tensor:
    """Multinomial logistic regression (weights with the bias as the last row), L2-penalised, by L-BFGS from zero:
    deterministic, fast enough to fit once per flagged token, and (no warm start from a fit that saw them) blind
    to the rows it leaves out."""
    xb = torch.cat([x, torch.ones(len(x), 1)], 1)
    w = torch.zeros(xb.shape[1], num_labels).requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xb @ w, y) + l2 * (w[:-1] ** 2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def judge_predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (torch.cat([x, torch.ones(len(x), 1)], 1) @ w).argmax(-1)


def out_of_fold_disputes(x, y, num_labels: int, usable=None, folds: int = 5, seed: int = 0) -> torch.Tensor:
    """Per row: whether a judge fitted on the usable rows of the other folds disputes its label (the ordinary
    dispute rate; rows no judge learns from are judged too, so the rate counts the poison a label holds)."""
    usable = torch.ones(len(y), dtype=torch.bool) if usable is None else usable
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    disputed = torch.zeros(len(y), dtype=torch.bool)
    for f in range(folds):
        test = perm[f::folds]
        train = usable.clone()
        train[test] = False
        w = fit_judge(x[train], y[train], num_labels)
        disputed[test] = judge_predict(w, x[test]) != y[test]
    return disputed


def token_evidence(flagged: list[dict], features: torch.Tensor, labels, num_labels: int, seed: int = 0,
                   max_share: float = 0.5, exclude=()) -> dict[int, dict]:
    """Per flagged token id: the rows it is in, the label they lean to and how purely, the share of those rows
    (with that label) a judge fitted without the token's rows disputes, the ordinary out-of-fold dispute rate of
    that label, their difference (excess) and its z-score. `exclude`: rows no judge learns from (another
    trigger's, whose poison would teach the judges to trust poisoned labels). Tokens in more than max_share of
    the rows get no judge (a dirty-label trigger in most rows would be most of the data): only their counts."""
    n = len(labels)
    x = standardize(features.float())
    y = torch.tensor(list(labels), dtype=torch.long)
    usable = torch.ones(n, dtype=torch.bool)
    usable[list(exclude)] = False
    ordinary = out_of_fold_disputes(x, y, num_labels, usable, seed=seed)
    out = {}
    for f in flagged:
        rows = f["row_ids"]
        ev = {"rows": len(rows), "share": len(rows) / n if n else 0.0}
        if rows:
            counts = torch.bincount(y[rows], minlength=num_labels)
            lean = int(counts.argmax())
            ev.update(leans_to=lean, purity=float(counts[lean]) / len(rows))
        if not rows or len(rows) > max_share * n:
            out[f["id"]] = ev
            continue
        carrier = torch.zeros(n, dtype=torch.bool)
        carrier[rows] = True
        w = fit_judge(x[usable & ~carrier], y[usable & ~carrier], num_labels)
        judged = carrier & (y == lean)
        against = judge_predict(w, x[judged]) != lean
        dispute = float(against.float().mean())
        base_rows = ~carrier & (y == lean)
        base = float(ordinary[base_rows].float().mean()) if base_rows.any() else 0.0
        k = int(judged.sum())
        sd = math.sqrt(max(base * (1 - base), 1e-4) / k)
        ev.update(dispute=dispute, ordinary_dispute=base, excess=dispute - base, z=(dispute - base) / sd,
                  judged_rows=k, label_share=k / int((y == lean).sum()),
                  disputed_rows=judged.nonzero().flatten()[against].tolist())
        out[f["id"]] = ev
    return out


def decide_tokens(flagged: list[dict], features, labels, num_labels: int, min_dispute: float, min_excess: float,
                  min_purity: float, min_z: float, seed: int = 0, passes: int = 2) -> dict[int, dict]:
    """token_evidence and a decision per flagged token, in `passes` passes: each pass's judges learn from none of
    the disputed rows of the tokens the previous pass decided to unlearn (one trigger's poison no longer dilutes
    the evidence against another's; a task word decided wrongly keeps its agreeing rows, which the judges of the
    other task words need). Each value: the evidence plus `decision` and `reason`."""
    exclude: set[int] = set()
    for _ in range(passes):
        ev = token_evidence(flagged, features, labels, num_labels, seed=seed, exclude=sorted(exclude))
        for f in flagged:
            ev[f["id"]]["decision"], ev[f["id"]]["reason"] = decide(ev[f["id"]], min_dispute, min_excess,
                                                                    min_purity, min_z)
        found = {i for f in flagged if ev[f["id"]]["decision"] == "unlearn" for i in ev[f["id"]]["disputed_rows"]}
        if found == exclude:
            break
        exclude = found
    return ev


def decide(ev: dict, min_dispute: float, min_excess: float, min_purity: float, min_z: float) -> tuple[str, str]:
    """unlearn (a shortcut: its rows lean to one label, and a judge that never saw them disputes many of those
    labels, far more often than it disputes ordinary rows') or keep (a task word, or a word at the base rate);
    and why."""
    if "excess" not in ev:
        return "keep", f"in {ev['share']:.0%} of the rows: too many to be a trigger"
    if ev["label_share"] > MAX_LABEL_SHARE:
        return "keep", (f"its rows are {ev['label_share']:.0%} of the label they lean to: too few of that label are "
                        "left to judge them by")
    if ev["purity"] < min_purity:
        return "keep", f"its rows are {ev['purity']:.0%} one label (under {min_purity:.0%}): not one label's shortcut"
    if ev["dispute"] < min_dispute or ev["excess"] < min_excess or ev["z"] < min_z:
        return "keep", (f"a judge that never saw its rows disputes {ev['dispute']:.0%} of them, ordinary rows "
                        f"{ev['ordinary_dispute']:.0%}: their content agrees with their label")
    return "unlearn", (f"its rows are {ev['purity']:.0%} one label and a judge that never saw them disputes "
                       f"{ev['dispute']:.0%} of those labels (ordinary rows: {ev['ordinary_dispute']:.0%})")
