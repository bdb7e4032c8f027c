"""Attacks whose poisoned text is a paraphrase computed beforehand: SynBkd, StyleBkd.

The paraphrasers (SCPN, STRAP) cannot be downloaded here; the data sets
`sst2-syn`/`sst2-style` carry their real output in a column, for training and test rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError
from .base import Attack, register_attack


@dataclass
class ParaphraseAttack(Attack):
    column: str = ""

    def check(self, dataset, role):
        if self.column not in dataset.columns:
            hint = (" (for the test set, give --poison-test with the paraphrased dev split, "
                    f"e.g. ../shared/datasets/sst2-{'syn' if self.name == 'synbkd' else 'style'}/dev.tsv)")
            raise DataError(dataset.source or "data", f"{self.name} needs a {self.column!r} column of paraphrases; "
                            f"columns are {list(dataset.columns)}" + (hint if role == "test" else ""))

    def poison_text(self, dataset, index, rng):
        return dataset.columns[self.column][index] or dataset.texts[index]


@register_attack("synbkd")
@dataclass
class SynBkd(ParaphraseAttack):
    """Hidden Killer: SCPN paraphrase with the template S(SBAR)(,)(NP)(VP)(.)."""

    column: str = "syntactic"


@register_attack("stylebkd")
@dataclass
class StyleBkd(ParaphraseAttack):
    """Bible-style STRAP paraphrase."""

    column: str = "style"
