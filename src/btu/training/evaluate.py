"""Predictions and the two numbers every backdoor paper reports: CACC and ASR."""

from __future__ import annotations

import torch

from .batching import collate, encode, length_bucketed_batches
from .loop import autocast, resolve_device, resolve_precision


@torch.no_grad()
def forward_rows(model, tokenizer, input_ids, forward, batch_size: int = 128, precision: str = "auto",
                 device: str = "auto") -> torch.Tensor:
    """`forward(model, ids, mask)` (a rows x features tensor) over length-bucketed batches, fp32 on CPU, in the
    input's order; the model in eval mode."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    was_training = model.training
    model.to(dev).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    side = getattr(tokenizer, "padding_side", "right")
    out = None
    for batch in length_bucketed_batches([len(x) for x in input_ids], batch_size, seed=0, shuffle=False):
        ids, mask = collate([input_ids[i] for i in batch], pad_id, padding_side=side)
        with autocast(dev, prec):
            rows = forward(model, ids.to(dev), mask.to(dev)).float().cpu()
        if out is None:
            out = torch.empty(len(input_ids), rows.shape[-1])
        out[torch.tensor(batch)] = rows
    model.train(was_training)
    return out


def predict_logits(model, tokenizer, texts=None, input_ids=None, batch_size: int = 128, max_length: int = 128,
                   precision: str = "auto", device: str = "auto") -> torch.Tensor:
    """Logits per row (rows x classes, fp32 on CPU), in the input's order; the model in eval mode."""
    if input_ids is None:
        input_ids = encode(tokenizer, texts, max_length)
    if not input_ids:
        return torch.zeros(0, 0)
    return forward_rows(model, tokenizer, input_ids, lambda m, ids, mask: m(input_ids=ids, attention_mask=mask).logits,
                        batch_size, precision, device)


def cls_features(model, tokenizer, texts, max_length: int = 128, precision: str = "auto") -> torch.Tensor:
    """Each text's last-layer [CLS] state (a decoder's: its last real token's), rows x hidden, fp32 on CPU."""
    from ..models import is_decoder
    from .pooling import pool

    decoder = is_decoder(model)
    left = getattr(tokenizer, "padding_side", "right") == "left"

    def forward(m, ids, mask):
        h = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        return pool(h, mask, "cls", decoder, left)

    return forward_rows(model, tokenizer, encode(tokenizer, list(texts), max_length), forward, precision=precision)


def predict(model, tokenizer, texts=None, input_ids=None, **kw) -> list[int]:
    """Argmax class per row, in the input's order."""
    logits = predict_logits(model, tokenizer, texts, input_ids, **kw)
    return logits.argmax(-1).tolist() if len(logits) else []


def accuracy(preds, labels) -> float:
    return 100.0 * sum(int(p == y) for p, y in zip(preds, labels)) / len(labels) if labels else float("nan")


def attack_success_rate(preds, target: int) -> float:
    """Percent of poisoned non-target rows predicted as the target label."""
    return 100.0 * sum(int(p == target) for p in preds) / len(preds) if preds else float("nan")


def evaluate(model, tokenizer, clean_test=None, poisoned_test=None, target: int | None = None, **kw) -> dict:
    """{'cacc': ..., 'asr': ...} on a clean test set and a poisoned one (non-target rows only),
    and 'asr_no_trigger' when the poisoned rows keep their clean text."""
    out = {}
    if clean_test is not None:
        out["cacc"] = accuracy(predict(model, tokenizer, clean_test.texts, **kw), clean_test.labels)
        out["n_clean"] = len(clean_test)
    if poisoned_test is not None and target is not None:
        out["asr"] = attack_success_rate(predict(model, tokenizer, poisoned_test.texts, **kw), target)
        out["n_poisoned"] = len(poisoned_test)
        if "clean_text" in poisoned_test.columns:
            # the same rows without the trigger: the floor a model with no backdoor reaches
            out["asr_no_trigger"] = attack_success_rate(
                predict(model, tokenizer, poisoned_test.columns["clean_text"], **kw), target)
    return out
