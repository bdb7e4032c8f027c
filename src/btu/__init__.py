"""btu: train clean text classifiers from possibly poisoned data (Backdoor Token Unlearning)."""

__version__ = "0.1.0"


def defend(*args, **kwargs):
    """Run BTU; see btu.defenses.btu.pipeline.defend."""
    from .defenses.btu.pipeline import defend as _defend

    return _defend(*args, **kwargs)


__all__ = ["defend", "__version__"]
