"""Defenses: classes registered by name, each a composition of stages (data / train / post / input), run by
one runner (`run_defense`)."""

from .base import DEFENSES, NEEDS, STAGES, Defense, FilterResult, Guard, get_defense, register, stage_of
from .bki import BKI as _bki  # noqa: F401  (registers "bki")
from .btu import defense as _btu  # noqa: F401  (registers "btu" and "btu-detect")
from .cube import CUBE as _cube  # noqa: F401  (registers "cube")
from .onion import ONION as _onion  # noqa: F401  (registers "onion" and "onion-input")
from .rap import Rap as _rap  # noqa: F401  (registers "rap" and "rap-input")
from .runner import RunSettings, run_defense
from .strip import Strip as _strip  # noqa: F401  (registers "strip" and "strip-input")

__all__ = ["DEFENSES", "NEEDS", "STAGES", "Defense", "FilterResult", "Guard", "RunSettings", "get_defense",
           "register", "run_defense", "stage_of"]
