"""btu: train clean text classifiers from possibly poisoned data (Backdoor Token Unlearning)."""

__version__ = "0.1.0"


def defend(*args, **kwargs):
    """Run BTU; see btu.defenses.btu.pipeline.defend."""
    from .defenses.btu.pipeline import defend as _defend

    return _defend(*args, **kwargs)


def run_defense(*args, **kwargs):
    """Run any registered defense; see btu.defenses.runner.run_defense."""
    from .defenses.runner import run_defense as _run

    return _run(*args, **kwargs)


__all__ = ["defend", "run_defense", "__version__"]
