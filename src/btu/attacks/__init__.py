"""Backdoor attacks (data poisoners), registered by name."""

from . import insertion, paraphrase  # noqa: F401  (registers the attacks)
from .base import ATTACKS, Attack, TokenWindow, make_attack, register_attack

__all__ = ["ATTACKS", "Attack", "TokenWindow", "make_attack", "register_attack"]
