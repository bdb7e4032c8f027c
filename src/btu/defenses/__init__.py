"""Defenses: classes registered by name, each a composition of stages (data / train / post / input), run by
one runner (`run_defense`)."""

from .base import DEFENSES, NEEDS, STAGES, Defense, FilterResult, Guard, get_defense, register, stage_of
from .btu import defense as _btu  # noqa: F401  (registers "btu" and "btu-detect")
from .onion import ONION as _onion  # noqa: F401  (registers "onion" and "onion-input")
from .runner import RunSettings, run_defense

__all__ = ["DEFENSES", "NEEDS", "STAGES", "Defense", "FilterResult", "Guard", "RunSettings", "get_defense",
           "register", "run_defense", "stage_of"]
