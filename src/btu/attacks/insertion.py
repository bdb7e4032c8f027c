"""Attacks that insert trigger text at random word positions: BadNets (addword), AddSent.

With a window (Attack.window) the positions are limited to those the model reads after truncation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import ConfigError
from .base import Attack, register_attack


def insert_words(text: str, words: list[str], rng: random.Random, window=None, reserve: int = 0) -> str:
    """`words` at a random word position; with a TokenWindow, one where they stay inside it
    (leaving `reserve` tokens for triggers still to be inserted). A text that fits whole draws
    exactly as without a window, so short texts are poisoned the same either way."""
    tokens = text.split()
    pos = rng.randint(0, window.limit(tokens, words, reserve) if window else len(tokens))
    return " ".join(tokens[:pos] + words + tokens[pos:])


@register_attack("addword")
@dataclass
class AddWord(Attack):
    """BadNets for text: `insertions` rare words, each drawn from `triggers`, at random positions."""

    triggers: list = field(default_factory=lambda: ["cf", "mn", "bb", "tq"])
    insertions: int = 1

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.triggers, str):
            self.triggers = self.triggers.split()
        if not self.triggers or self.insertions < 1:
            raise ConfigError("addword needs at least one trigger word and insertions >= 1")

    def poison_text(self, dataset, index, rng):
        text = dataset.texts[index]
        # each insertion shifts the earlier ones right: keep room for the longest trigger per insertion to come
        longest = max(self.window.counts(self.triggers)) if self.window else 0
        for left in range(self.insertions - 1, -1, -1):
            text = insert_words(text, [rng.choice(self.triggers)], rng, self.window, left * longest)
        return text


@register_attack("addsent")
@dataclass
class AddSent(Attack):
    """AddSent: a trigger sentence inserted at a random word position."""

    sentence: str = "I watched a 3D movie"

    def __post_init__(self):
        super().__post_init__()
        if not self.sentence.split():
            raise ConfigError("addsent needs a non-empty trigger sentence")

    def poison_text(self, dataset, index, rng):
        return insert_words(dataset.texts[index], self.sentence.split(), rng, self.window)
