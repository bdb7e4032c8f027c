"""Defenses, registered by name and stage."""

from .base import DEFENSES, STAGES, get_defense, register_defense
from .btu import pipeline as _btu  # noqa: F401  (registers "btu")

__all__ = ["DEFENSES", "STAGES", "get_defense", "register_defense"]
