"""The one training loop every command and defense uses.

Dynamic padding over length-bucketed batches, a choosable set of trainable parameters,
AdamW (paper defaults: batch 32, lr 2e-5), optional bf16 autocast, CPU or CUDA, seeded.
What it minimises is an `Objective` (objectives.py; cross-entropy by default).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch

from ..errors import ConfigError
from . import checkpoint as ckpt
from .allocator import keep_freed_memory
from .batching import collate, encode, length_bucketed_batches
from .dropout import fast_dropout
from .objectives import Batch, CrossEntropy, Objective, balanced_class_weights, distillation_loss  # noqa: F401
from .seeding import seed_everything

TRAINABLE_CHOICES = ("all", "embeddings", "head")


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class TrainConfig:
    """Hyperparameters of one training run; saved beside its results."""

    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 2e-5
    embedding_lr: float | None = None  # the word embeddings' own lr (None: lr)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    schedule: str = "linear"  # linear decay to 0, or constant
    max_grad_norm: float = 1.0
    max_length: int = 128
    trainable: str | list = "all"  # all | embeddings (word embeddings only) | head | [name substrings]
    precision: str = "auto"  # auto (bf16 where the hardware has it) | bf16 | fp32
    fast_dropout: bool = True  # CPU dropout masks from numpy's PCG64 (training/dropout.py)
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    desc: str = "train"

    def to_dict(self):
        return asdict(self)


@dataclass
class TrainResult:
    steps: int = 0
    rows: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    losses: list = field(default_factory=list)
    resumed_from: int = 0  # the step a checkpoint resumed from (0: a fresh start)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def set_trainable(model, trainable) -> list[torch.nn.Parameter]:
    """Freeze everything but the chosen parameters; return the trainable ones."""
    emb = model.get_input_embeddings().weight
    if trainable == "all":
        chosen = {id(p) for p in model.parameters()}
    elif trainable == "embeddings":
        chosen = {id(emb)}
    elif trainable == "head":
        names = ("classifier", "score", "pre_classifier", "pooler")
        chosen = {id(p) for n, p in model.named_parameters() if any(k in n for k in names)}
    elif isinstance(trainable, (list, tuple)):
        chosen = {id(p) for n, p in model.named_parameters() if any(k in n for k in trainable)}
    else:
        raise ConfigError(f"trainable must be one of {TRAINABLE_CHOICES} or a list of names, not {trainable!r}")
    params = []
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
        if id(p) in chosen:
            params.append(p)
    if not params:
        raise ConfigError(f"trainable={trainable!r} selects no parameter of {type(model).__name__}")
    return params


def param_groups(model, params, cfg: TrainConfig) -> list[dict]:
    """One optimizer group, or two when the word embeddings have their own learning rate."""
    emb = model.get_input_embeddings().weight
    if cfg.embedding_lr is None or not any(p is emb for p in params):
        return [{"params": params}]
    rest = [p for p in params if p is not emb]
    return ([{"params": rest}] if rest else []) + [{"params": [emb], "lr": cfg.embedding_lr}]


def train(model, tokenizer, texts=None, labels=None, config: TrainConfig | None = None, input_ids=None,
          on_step=None, optimizer=None, objective: Objective | None = None, checkpoint=None) -> TrainResult:
    """Fine-tune `model` in place on (texts or pre-tokenized input_ids, labels), minimising `objective`
    (CrossEntropy() by default; WeightedCrossEntropy, Distillation or a defense's own: see objectives.py).

    on_step(step, model) runs after every optimizer step (BTU records embedding distances).
    checkpoint: a folder; the state is saved there at each epoch's end, and a run that finds a checkpoint of the
    same training there continues from it (checkpoint.py; the caller clears it when its results are safe).
    Needs a resumable objective and no on_step. result.rows counts the rows trained in this call.
    """
    cfg = config or TrainConfig()
    objective = objective if objective is not None else CrossEntropy()
    if input_ids is None:
        input_ids = encode(tokenizer, texts, cfg.max_length)
    input_ids = [x[: cfg.max_length] for x in input_ids]
    if not input_ids:
        raise ConfigError("no training rows")
    seed_everything(cfg.seed)
    keep_freed_memory()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model.to(device)
    model.train()
    params = set_trainable(model, cfg.trainable)
    objective.setup(model, device, len(input_ids))
    extra = list(objective.parameters())
    if optimizer is None:
        extra_lr = objective.parameter_lr if objective.parameter_lr is not None else cfg.lr
        groups = param_groups(model, params, cfg) + ([{"params": extra, "lr": extra_lr}] if extra else [])
        # fused: one kernel for all parameters; the per-tensor loop cost ~160 ms a step on 2 CPU cores
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    lengths = [len(x) for x in input_ids]
    n_batches = math.ceil(len(input_ids) / cfg.batch_size)
    total_steps = max(1, math.ceil(cfg.epochs * n_batches))
    warmup = int(cfg.warmup_ratio * total_steps)

    def lr_factor(step):
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    sparse = SparseEmbeddingGrad(model, params + extra)  # one clipping norm over everything trained
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    side = getattr(tokenizer, "padding_side", "right")
    labels_t = torch.tensor(labels, dtype=torch.long)
    # only what the objective asks for: the default forward call stays the plain one
    wants = {k: True for k in ("output_hidden_states", "output_attentions") if getattr(objective, k)}
    result = TrainResult()
    saved = None
    if checkpoint is not None:
        if on_step is not None or not objective.resumable:
            raise ValueError("checkpoint: needs no on_step and an objective with resumable = True")
        fp = ckpt.fingerprint(cfg.to_dict(), input_ids, labels, objective, model)
        saved = ckpt.load(checkpoint, fp, device)
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            objective.load_state_dict(saved["objective"])
            with torch.no_grad():
                for p, v in zip(extra, saved["extra"]):
                    p.copy_(v)
            result.losses, result.resumed_from = list(saved["losses"]), saved["step"]
    bar = _progress(total_steps, cfg)
    if bar is not None and result.resumed_from:
        bar.update(result.resumed_from)

    def one_step(rows) -> float:
        ids, mask = collate([input_ids[i] for i in rows], pad_id, padding_side=side)
        rows_t = torch.tensor(rows, dtype=torch.long)
        batch = Batch(rows=rows_t, input_ids=ids.to(device), attention_mask=mask.to(device),
                      labels=labels_t[rows_t].to(device), step=step)
        objective.before_step(step, model, batch)
        with autocast(device, precision):
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **wants)
            loss = objective.loss(out, batch)  # inside the autocast, where HF computed its labels= loss
        if not torch.isfinite(loss):
            raise ConfigError(f"training diverged (loss {loss.item()}) at step {step}; lower --lr")
        loss.backward()
        sparse.clip_and_densify(cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        objective.after_step(step, model, value)
        return value

    def batches():
        """Epoch after epoch of length-bucketed batches, each epoch in its own seeded order."""
        for epoch in itertools.count():
            yield from length_bucketed_batches(lengths, cfg.batch_size, seed=cfg.seed * 1000 + epoch)

    def save_checkpoint(masks):
        ckpt.save(checkpoint, {"fingerprint": fp, "step": step, "losses": result.losses,
                               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "objective": objective.state_dict(),
                               "extra": [p.detach() for p in extra], "rng": ckpt.rng_state(masks)})

    start = time.perf_counter()
    step = result.resumed_from
    try:
        with fast_dropout(cfg.seed, enabled=cfg.fast_dropout and device.type == "cpu") as masks:
            if saved is not None:
                ckpt.set_rng_state(saved["rng"], masks)
            for batch in itertools.islice(batches(), result.resumed_from, total_steps):
                result.losses.append(one_step(batch))
                step += 1
                result.rows += len(batch)
                if on_step is not None:
                    on_step(step, model)
                if checkpoint is not None and (step % n_batches == 0 or step == total_steps):
                    save_checkpoint(masks)  # the last one is the finished model: a rerun restores it, no step
                if bar is not None:
                    el = time.perf_counter() - start
                    bar.set_postfix(loss=f"{sum(result.losses[-20:]) / len(result.losses[-20:]):.3f}",
                                    rows_s=f"{result.rows / el:.0f}", refresh=False)
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        sparse.restore()
    result.steps = step
    result.seconds = time.perf_counter() - start
    result.final_loss = sum(result.losses[-20:]) / len(result.losses[-20:])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return result


class SparseEmbeddingGrad:
    """Sparse word-embedding gradients, clipped and densified into one reused buffer.

    A dense embedding gradient is a fresh |V| x d tensor each step, and clipping it reads and
    scales all of it; on CPU those passes over 47 MB (BERT's vocabulary) were among the
    largest costs of a step in profiling. Here the gradient's norm and scaling use only the
    rows in the batch, and the buffer is zeroed only where the previous step wrote. AdamW
    then sees the same dense values it would have seen.
    """

    def __init__(self, model, params):
        emb = model.get_input_embeddings()
        self.module = emb if isinstance(emb, torch.nn.Embedding) and any(p is emb.weight for p in params) else None
        self.params = params
        self.buffer = None
        self.rows = None
        if self.module is not None:
            self.was_sparse = self.module.sparse
            self.module.sparse = True

    def clip_and_densify(self, max_norm: float) -> None:
        """clip_grad_norm_(params, max_norm) (no clipping when 0), then the dense embedding gradient."""
        sparse = None
        if self.module is not None:
            w = self.module.weight
            if w.grad is not None and w.grad.is_sparse:
                sparse = w.grad.coalesce()
                w.grad = None
        values = sparse.values() if sparse is not None else None
        if max_norm:
            dense = [p for p in self.params if p.grad is not None]
            grads = [p.grad for p in dense] + ([values] if values is not None else [])
            if grads:
                total = torch.nn.utils.get_total_norm(grads)
                torch.nn.utils.clip_grads_with_norm_(dense, max_norm, total)
                if values is not None:  # the same coefficient clip_grads_with_norm_ used
                    values = values * torch.clamp(max_norm / (total + 1e-6), max=1.0).to(values.dtype)
        if sparse is None:
            return
        w = self.module.weight
        if self.buffer is None:
            self.buffer = torch.zeros_like(w)
        elif self.rows is not None:
            self.buffer.index_fill_(0, self.rows, 0.0)
        self.rows = sparse.indices()[0]
        self.buffer.index_add_(0, self.rows, values.to(self.buffer.dtype))
        w.grad = self.buffer

    def restore(self):
        if self.module is not None:
            self.module.sparse = self.was_sparse
            self.buffer = None
            self.rows = None


def _progress(total, cfg):
    from ..progress import progress_bar

    return progress_bar(total, cfg.desc, "step", cfg.progress)
