"""Defenses: classes registered by name, each a composition of stages (data / train / post / input), run by
one runner (`run_defense`)."""

from .abl import ABL as _abl  # noqa: F401  (registers "abl")
from .base import DEFENSES, NEEDS, STAGES, Defense, FilterResult, Guard, get_defense, register, stage_of
from .bki import BKI as _bki  # noqa: F401  (registers "bki")
from .btu import defense as _btu  # noqa: F401  (registers "btu" and "btu-detect")
from .cube import CUBE as _cube  # noqa: F401  (registers "cube")
from .dpoe import DPoE as _dpoe  # noqa: F401  (registers "dpoe")
from .honeypot import ST as _st  # noqa: F401  (registers "st")
from .mf import MF as _mf  # noqa: F401  (registers "mf")
from .onion import ONION as _onion  # noqa: F401  (registers "onion" and "onion-input")
from .rap import Rap as _rap  # noqa: F401  (registers "rap" and "rap-input")
from .runner import RunSettings, run_defense
from .strip import Strip as _strip  # noqa: F401  (registers "strip" and "strip-input")
from .textguard import TG as _tg  # noqa: F401  (registers "tg")

__all__ = ["DEFENSES", "NEEDS", "STAGES", "Defense", "FilterResult", "Guard", "RunSettings", "get_defense",
           "register", "run_defense", "stage_of"]
