"""The defense registry. Each defense declares its stage:

data  (poisoned train set -> filtered train set), train (poisoned train set + pretrained
model -> trained model), post (backdoored model + a little clean data -> repaired model),
input (trained model -> prediction wrapper). The runner and the threat-model checks
read the stage, so adding a defense is one module and one `register_defense` call.
"""

from __future__ import annotations

from ..errors import ConfigError

STAGES = ("data", "train", "post", "input")
DEFENSES: dict[str, dict] = {}


def register_defense(name: str, stage: str, config_cls, run, needs_clean_data: bool = False):
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    DEFENSES[name] = {"stage": stage, "config": config_cls, "run": run, "needs_clean_data": needs_clean_data}


def get_defense(name: str) -> dict:
    if name not in DEFENSES:
        raise ConfigError(f"unknown defense {name!r}; choose from {', '.join(sorted(DEFENSES))}")
    return DEFENSES[name]
