"""MF, moderate-fitting (Zhu et al., "Moderate-fitting as a Natural Backdoor Defender for Pre-trained Language
Models", NeurIPS 2022), the way the BTU paper reproduces it: low-rank reparameterisation (LoRA).

A pretrained model adapting to a poisoned set first learns the task's major features and only later, in an
overfitting stage, the trigger's subsidiary ones. MF keeps the adaptation in the first stage by restricting its
capacity: the pretrained weights stay frozen, only rank-`rank` LoRA updates of the attention projections (`peft`)
and the classification head are trained, for few epochs. The trained adapter is merged into the weights, so the
defended model is an ordinary classifier folder.

Defaults: rank 4, alpha 16, dropout 0.1 on the attention query/value projections (peft's choice for the
architecture), 2 epochs at lr 5e-4 (LoRA trains far fewer weights than full fine-tuning and needs a larger lr to
fit the task at all; chosen on SST-2 dev, benchmarks/results/train-defaults-dev.md).

`reparam=N` adds the MF authors' low-rank reparameterisation (their code, thunlp/Moderate-fitting, runs it with
N = 2, rank 8, lr 3e-4, 10 epochs): every adapter's A matrix is a slice of one vector generated from a learned
N-vector through a Tanh bottleneck of width N, every B matrix a slice of another (its input starts at zero, so
the update starts at zero, as LoRA's does). The adapters then move together, along few directions at a time.
Their code generates the classifier's weights the same way; here the head is trained directly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..training import train
from .base import Defense, register
from .options import Options, option

INSTALL = "pip install 'btu[lora]' (or: pip install peft)"
HEADS = ("classifier", "score", "pooler", "pre_classifier")  # trained in full beside the adapter, where present


def lora_library():
    try:
        import peft
    except ImportError as e:
        raise ConfigError(f"defense 'mf' needs peft ({e}): {INSTALL}") from None
    return peft


@dataclass
class MFOptions(Options):
    rank: int = option(4, "LoRA rank of each adapted projection", low=1)
    alpha: float = option(16.0, "LoRA alpha (the update is scaled by alpha / rank)", low=0, low_inclusive=False)
    dropout: float = option(0.1, "dropout on the LoRA branch", low=0, high=1, high_inclusive=False)
    targets: list[str] = option(help="module names to adapt (empty: peft's default for the architecture, the "
                                     "attention query and value projections)", factory=list)
    epochs: float = option(2.0, "epochs of LoRA training (fewer than plain fine-tuning: moderate fitting)", low=0,
                           low_inclusive=False)
    lr: float = option(5e-4, "learning rate of the LoRA weights and the head", low=0, low_inclusive=False)
    reparam: int = option(0, "generate every LoRA A (and every B) from one learned vector of this size through a "
                             "Tanh bottleneck of this width, as the MF authors' code does (they use 2); 0: plain LoRA",
                          low=0)


def with_lora(model, o: MFOptions):
    """`model` wrapped by peft with rank-`o.rank` adapters; the head modules present are trained in full."""
    peft = lora_library()
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    heads = [h for h in HEADS if h in names]
    cfg = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout,
                          target_modules=list(o.targets) or None, modules_to_save=heads)
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question: not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            return peft.get_peft_model(model, cfg)
    except ValueError as e:
        raise ConfigError(f"mf: cannot place LoRA adapters on {type(model).__name__}: {str(e).splitlines()[0]}; "
                          "name the projections with --set targets=[...]") from None


class Reparameterisation(torch.nn.Module):
    """The adapters' A and B weights generated from two small learned vectors (MF's low-rank reparameterisation):
    before each forward pass the generated vectors are cut into the adapters' matrices."""

    def __init__(self, wrapped, dim: int):
        super().__init__()
        self.slots = {"A": [], "B": []}  # (linear module, shape) in a fixed order
        for n, m in wrapped.named_modules():
            for side in ("A", "B"):
                holder = getattr(m, f"lora_{side}", None)
                if isinstance(holder, torch.nn.ModuleDict):
                    for lin in holder.values():
                        self.slots[side].append((lin, tuple(lin.weight.shape)))
        sizes = {side: sum(int(torch.Size(s).numel()) for _, s in slots) for side, slots in self.slots.items()}
        self.inputs = torch.nn.ParameterDict({
            "A": torch.nn.Parameter(torch.rand(dim)),  # uniform, as the authors' code
            "B": torch.nn.Parameter(torch.zeros(dim))})  # zero: tanh(0) = 0, so every B starts at zero
        self.nets = torch.nn.ModuleDict({side: torch.nn.Sequential(
            torch.nn.Linear(dim, dim, bias=False), torch.nn.Tanh(), torch.nn.Linear(dim, sizes[side], bias=False))
            for side in ("A", "B")})
        for slots in self.slots.values():
            for lin, _ in slots:
                del lin._parameters["weight"]  # a generated tensor takes its place at each forward pass
        self.allocate()

    def allocate(self) -> None:
        for side, slots in self.slots.items():
            flat, at = self.nets[side](self.inputs[side]), 0
            for lin, shape in slots:
                n = int(torch.Size(shape).numel())
                lin.weight = flat[at:at + n].view(shape)
                at += n


def reparameterise(wrapped, dim: int) -> Reparameterisation:
    """Attach MF's reparameterisation to a peft-wrapped model (its parameters are named lora_reparam.*, so the
    training loop trains them) and regenerate the adapters before every forward pass."""
    rep = Reparameterisation(wrapped, dim)
    wrapped.add_module("lora_reparam", rep)
    wrapped.register_forward_pre_hook(lambda module, args: rep.allocate())
    return rep


TRAINED = ["lora_", "modules_to_save"]  # parameter names of the adapter and of the trained copies of the heads


def trained_parameters(model) -> tuple[int, int]:
    """(trained, total) parameter counts of a peft-wrapped model, as the training loop selects them."""
    total = sum(p.numel() for n, p in model.named_parameters() if "original_module" not in n)
    trained = sum(p.numel() for n, p in model.named_parameters() if any(k in n for k in TRAINED))
    return trained, total


@register
class MF(Defense):
    """Moderate-fitting: LoRA on the attention projections, few epochs; the adapter merged into the weights."""

    name = "mf"
    summary = "MF (moderate-fitting): train low-rank LoRA adapters and the head only, for few epochs, then merge"
    Options = MFOptions
    stage = "train"
    result_name = "MF (LoRA)"
    quick_options = {"epochs": 1.0, "lr": 5e-3}

    def fit(self, ctx, state):
        o = self.options
        wrapped = with_lora(ctx.pretrained(), o)
        rep = reparameterise(wrapped, o.reparam) if o.reparam else None
        trained, total = trained_parameters(wrapped)
        res = train(wrapped, ctx.tokenizer, input_ids=ctx.input_ids, labels=ctx.train.labels,
                    config=ctx.train_config("MF: LoRA training", epochs=o.epochs, lr=o.lr, trainable=TRAINED),
                    checkpoint=ctx.checkpoint("mf"))
        targets = sorted(_adapted(wrapped))
        if rep is not None:
            with torch.no_grad():
                rep.allocate()  # the trained generator's adapters, without autograd history, are what is merged
        model = wrapped.merge_and_unload()
        model.eval()
        state.notes["mf"] = {"rank": o.rank, "alpha": o.alpha, "reparam": o.reparam, "targets": targets,
                             "trained_parameters": trained, "parameters": total,
                             "trained_share": 100.0 * trained / total, "epochs": o.epochs, "lr": o.lr,
                             "steps": res.steps}
        return model

    def report(self, ctx, state) -> dict:
        return {"mf": state.notes["mf"]} if "mf" in state.notes else {}

    def markdown(self, report: dict) -> str:
        r = report.get("mf")
        if not r:
            return ""
        return ("## MF\n\n"
                f"LoRA rank {r['rank']} (alpha {r['alpha']:g}) on {', '.join(r['targets'])}, and the head: "
                + (f"the adapters generated through a reparameterisation of width {r['reparam']}; "
                   if r.get("reparam") else "") +
                f"{r['trained_parameters']:,} of {r['parameters']:,} parameters trained ({r['trained_share']:.2f} %), "
                f"{r['epochs']:g} epochs at lr {r['lr']:g}; the adapter is merged into the saved model.\n")

    def console(self, report: dict) -> str:
        r = report.get("mf")
        return "" if not r else (f"MF: LoRA rank {r['rank']} on {', '.join(r['targets'])}; "
                                 f"{r['trained_share']:.2f} % of the parameters trained, then merged.")


def _adapted(wrapped) -> set[str]:
    """The suffixes of the module names that received an adapter."""
    out = set()
    for n, m in wrapped.named_modules():
        if hasattr(m, "lora_A") and isinstance(getattr(m, "lora_A"), torch.nn.ModuleDict):
            out.add(n.rsplit(".", 1)[-1])
    return out
