"""The one in-memory data set type every layer passes around."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TextDataset:
    """Texts with integer labels, their names, and per-row ground-truth poison flags.

    `columns` keeps extra text columns (for example the paraphrases that SynBkd and
    StyleBkd read). `poisoned` is None when nothing is known about poisoning.
    """

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    poisoned: list[bool] | None = None
    columns: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise ValueError("texts and labels differ in length")
        if self.poisoned is not None and len(self.poisoned) != len(self.texts):
            raise ValueError("poisoned flags and texts differ in length")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def poison_flags(self) -> list[bool]:
        return self.poisoned if self.poisoned is not None else [False] * len(self)

    def subset(self, indices) -> "TextDataset":
        indices = list(indices)
        return TextDataset(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            label_names=list(self.label_names),
            poisoned=None if self.poisoned is None else [self.poisoned[i] for i in indices],
            columns={k: [v[i] for i in indices] for k, v in self.columns.items()},
            source=self.source,
        )

    def label_id(self, name_or_index) -> int:
        """A label given by name (preferred) or by index."""
        from ..errors import ConfigError

        s = str(name_or_index)
        if s in self.label_names:
            return self.label_names.index(s)
        try:
            i = int(s)
        except ValueError:
            raise ConfigError(f"unknown label {s!r}; labels are {self.label_names}") from None
        if not 0 <= i < self.num_labels:
            raise ConfigError(f"label index {i} out of range; labels are {self.label_names}")
        return i
