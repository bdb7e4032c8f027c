"""The attack contract and registry.

An attack = how a row's text is poisoned (`poison_text`) + which rows (a seeded choice of
`rate` x the training set among the non-target rows) + a label policy (dirty: poisoned
rows get the target label; clean: only target rows are poisoned, labels kept). Every
poisoned data set keeps a per-row `poisoned` flag as ground truth.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from ..data.dataset import TextDataset
from ..errors import ConfigError

ATTACKS: dict[str, type] = {}


def register_attack(name: str):
    def deco(cls):
        cls.name = name
        ATTACKS[name] = cls
        return cls
    return deco


def make_attack(name: str, **options) -> "Attack":
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose from {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    known = cls.__dataclass_fields__
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ConfigError(f"attack {name!r} has no option {unknown[0]!r}; options: {', '.join(known)}")
    return cls(**options)


class TokenWindow:
    """The first max_length tokens a model reads: where a trigger must go to survive truncation.

    Words are counted one by one, as the tokenizer splits them alone: exact for WordPiece
    (BERT, MiniLM), approximate for BPE tokenizers (RoBERTa, GPT-2), where a word's tokens
    depend on the space before it.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.room = max_length - tokenizer.num_special_tokens_to_add()

    def counts(self, words: list[str]) -> list[int]:
        """Tokens per word, in one batched call."""
        if not words:
            return []
        return [len(ids) for ids in self.tokenizer(list(words), add_special_tokens=False)["input_ids"]]

    def limit(self, words: list[str], trigger: list[str], reserve: int = 0) -> int:
        """The largest k such that words[:k] + trigger (+ `reserve` tokens to come, + the special tokens) fits."""
        need = sum(self.counts(trigger))
        free = self.room - need - reserve
        if free < 0:
            later = f" (+ {reserve} for the insertions after it)" if reserve else ""
            raise ConfigError(f"trigger {' '.join(trigger)!r} is {need} tokens{later}; with the tokenizer's "
                              f"{self.max_length - self.room} special tokens it does not fit in max_length "
                              f"{self.max_length}")
        used = 0
        for k, n in enumerate(self.counts(words)):
            used += n
            if used > free:
                return k
        return len(words)


@dataclass
class Attack:
    rate: float = 0.1
    target: int = 1
    label_policy: str = "dirty"  # dirty | clean
    name = "attack"
    window = None  # a TokenWindow: insertion attacks put the trigger inside it; not an option, so not in config()

    def __post_init__(self):
        if not 0 < self.rate <= 1:
            raise ConfigError(f"poison rate must be in (0, 1], not {self.rate}")
        if self.label_policy not in ("dirty", "clean"):
            raise ConfigError(f"label policy must be dirty or clean, not {self.label_policy!r}")

    def config(self) -> dict:
        return {"attack": self.name, **asdict(self)}

    # --- to implement -------------------------------------------------------------------
    def poison_text(self, dataset: TextDataset, index: int, rng: random.Random) -> str:
        raise NotImplementedError

    def check(self, dataset: TextDataset, role: str) -> None:
        """Raise a clear error when the data cannot carry this attack."""

    # --- shared ---------------------------------------------------------------------------
    def _check_target(self, dataset):
        if not 0 <= self.target < dataset.num_labels:
            raise ConfigError(f"target label {self.target} out of range for labels {dataset.label_names}")

    def select_rows(self, dataset: TextDataset, seed: int) -> list[int]:
        """The rows to poison: round(rate x len) of the eligible rows, seeded."""
        eligible = [i for i, y in enumerate(dataset.labels)
                    if (y != self.target) == (self.label_policy == "dirty")]
        n = round(self.rate * len(dataset))
        if n > len(eligible):
            raise ConfigError(f"{dataset.source}: cannot poison {n} rows ({self.rate:.1%}): only "
                              f"{len(eligible)} eligible rows for target {dataset.label_names[self.target]!r}")
        rng = random.Random(f"{seed}:{self.name}:select")
        return sorted(rng.sample(eligible, n))

    def poison_train(self, dataset: TextDataset, seed: int = 0) -> TextDataset:
        """A copy of the training set with the chosen rows poisoned in place and flagged; column `clean_text`
        keeps every row's text before poisoning (what a text-cleaning filter should give back)."""
        self._check_target(dataset)
        self.check(dataset, "train")
        rows = self.select_rows(dataset, seed)
        rng = random.Random(f"{seed}:{self.name}:train")
        out = dataset.subset(range(len(dataset)))
        out.columns["clean_text"] = list(dataset.texts)
        flags = list(dataset.poison_flags)
        for i in rows:
            out.texts[i] = self.poison_text(dataset, i, rng)
            if self.label_policy == "dirty":
                out.labels[i] = self.target
            flags[i] = True
        out.poisoned = flags
        out.source = f"{dataset.source} + {self.name}"
        return out

    def poison_test(self, dataset: TextDataset, seed: int = 0) -> TextDataset:
        """Every test row whose true label is not the target, poisoned (labels kept): the ASR set.

        Column `clean_text` keeps each row without its trigger: the rate at which a model
        predicts the target there is the ASR a model without the backdoor would show.
        """
        self._check_target(dataset)
        self.check(dataset, "test")
        rows = [i for i, y in enumerate(dataset.labels) if y != self.target]
        rng = random.Random(f"{seed}:{self.name}:test")
        out = dataset.subset(rows)
        out.columns["clean_text"] = list(out.texts)  # for the no-trigger baseline of ASR
        out.texts = [self.poison_text(dataset, i, rng) for i in rows]
        out.poisoned = [True] * len(rows)
        out.source = f"{dataset.source} + {self.name}"
        return out
