"""What a defense is, and the registry that the runner, the CLI and the contract test read.

A defense is a class registered by name. It declares its **steps**, each of one stage:

data   poisoned train set -> kept rows, a suspicion score per row      (`filter(ctx, state)`)
train  poisoned (or kept) train set + pretrained model -> trained model (`fit(ctx, state)`)
post   trained model + a little clean data -> repaired model           (`repair(ctx, state, model)`)
input  trained model -> a guard that corrects or rejects inputs         (`guard(ctx, state, model)`)

(`steps()`; a one-step defense sets `stage`), what it **needs** (clean data, a language model, the
pretrained weights, a victim), and an **options dataclass** holding its hyperparameters and nothing
else. The runner composes the steps: a defense whose last step is a data step is followed by ordinary
training on the kept rows, written once in the runner; a post or input step without a model before it
gets the victim, trained once per run. Adding a defense is one module and one `@register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

STAGES = ("data", "train", "post", "input")
NEEDS = {
    "pretrained": "the pretrained weights (--model)",
    "victim": "a model trained on the poisoned data (trained once per run, or --victim DIR)",
    "clean_data": "clean data of the task (--clean-data FILE)",
    "language_model": "a causal language model (--set lm=NAME)",
}
DEFENSES: dict[str, type["Defense"]] = {}


@dataclass
class FilterResult:
    """What a data step returns: the kept rows (indices into the training set, in training order), their
    dataset (rows may be rewritten: tokens removed) and token ids, a suspicion score per training row (higher:
    more suspicious), and the step's own report."""

    kept: list[int]
    dataset: object  # TextDataset of the kept rows
    input_ids: list[list[int]]
    scores: list[float]
    report: dict = field(default_factory=dict)


class Guard:
    """An input-stage guard: predicts through a model, correcting inputs or rejecting them.

    `predict(texts)` returns (predictions, rejected flags); a rejected row counts as a detection. A guard that
    only corrects (a vote, a cleaned input) and never rejects sets `rejects = False`: it reports no FRR / FAR."""

    rejects = True

    def predict(self, texts: list[str]) -> tuple[list[int], list[bool]]:
        raise NotImplementedError


class Defense:
    """Base class. Subclasses set the class attributes and implement the methods of their steps' stages."""

    name: str = ""
    summary: str = ""  # one line for `btu defenses`
    needs: frozenset = frozenset({"pretrained"})
    uses_clean_data: bool = False  # clean data is optional but used (needed: put "clean_data" in needs)
    Options: type = None  # a dataclass (btu.defenses.options.Options)
    presets: dict = {}  # named bundles of options (recipes)
    default_preset: str | None = None
    result_name: str | None = None  # the defended model's row in the report (default: the name)
    stage: str = ""  # a one-step defense's stage; a composition overrides steps() instead
    # options that make one run take seconds on a tiny random model: the registry's contract test runs each
    # defense with them (on top of the default preset)
    quick_options: dict = {}

    def __init__(self, options):
        self.options = options

    # the composition -----------------------------------------------------------------------------------------
    def steps(self) -> list[tuple[str, object]]:
        """(stage, method) of each step, in order (may depend on the options). Default: the one step of
        `stage`, calling filter, fit, repair or guard."""
        method = {"data": self.filter, "train": self.fit, "post": self.repair, "input": self.guard}
        if self.stage not in method:
            raise ValueError(f"{self.name}: stage must be one of {STAGES}, not {self.stage!r}")
        return [(self.stage, method[self.stage])]

    def shared_artifacts(self) -> dict[str, dict]:
        """The artifacts (names in ctx.artifacts) that runs on the same data, model, run settings and seed may
        share, each with the options it depends on: {"btu.detection": {"alpha": 0.05, ...}}. A grid reuses one
        artifact between cells whose dicts are equal. Default: none."""
        return {}

    def required(self) -> set[str]:
        """What this configuration needs (may depend on the options: a filter that consults the victim)."""
        return set(self.needs)

    def train_overrides(self) -> dict:
        """Settings of the ordinary training after a final data step: lr, epochs, objective (default: the run's)."""
        return {}

    # one method per stage ---------------------------------------------------------------------------------------
    def filter(self, ctx, state) -> FilterResult:
        raise NotImplementedError

    def fit(self, ctx, state):
        raise NotImplementedError

    def repair(self, ctx, state, model):
        raise NotImplementedError

    def guard(self, ctx, state, model) -> Guard:
        raise NotImplementedError

    # the report ---------------------------------------------------------------------------------------------------
    def extra_rows(self, ctx, state) -> list[tuple[str, object]]:
        """(row name, model) of intermediate models to measure between no defense and the defended model."""
        return []

    def controls(self, ctx, state) -> list[tuple[str, object]]:
        """(row name, model) of control models measured after the defended model."""
        return []

    def report(self, ctx, state) -> dict:
        """The defense's own report fields (merged into report.json)."""
        return {}

    def markdown(self, report: dict) -> str:
        """The defense's own sections of report.md."""
        return ""

    def console(self, report: dict) -> str:
        """What the CLI prints after the results table."""
        return ""

    def save(self, result, out) -> list[str]:
        """Write the defense's own files into `out` beside the common ones; returns their names."""
        return []


def register(cls: type[Defense]) -> type[Defense]:
    """Class decorator: make `cls` reachable by its name from the runner, the CLI and grid files."""
    if not cls.name or cls.Options is None:
        raise ValueError(f"{cls.__name__}: a defense needs a name and an Options dataclass")
    unknown = set(cls.needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"{cls.name}: unknown needs {sorted(unknown)}; choose from {sorted(NEEDS)}")
    DEFENSES[cls.name] = cls
    return cls


def get_defense(name: str) -> type[Defense]:
    if name not in DEFENSES:
        raise ConfigError(f"unknown defense {name!r}; choose from {', '.join(sorted(DEFENSES))} (`btu defenses`)")
    return DEFENSES[name]


def stage_of(cls: type[Defense]) -> str:
    """The stages of a defense's default configuration, joined: `data`, `data+post`, ..."""
    return "+".join(dict.fromkeys(stage for stage, _ in cls(default_options(cls)).steps()))


def default_options(cls: type[Defense], preset: str | None = None):
    preset = preset or cls.default_preset
    if preset is None:
        return cls.Options()
    if preset not in cls.presets:
        raise ConfigError(f"{cls.name}: preset must be one of {', '.join(cls.presets)}, not {preset!r}")
    return cls.Options(**cls.presets[preset])
