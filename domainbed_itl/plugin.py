"""What the `domainbed.plugins` entry point calls: register the ITL algorithms."""


def register() -> None:
    """Import the modules whose decorators register ITL's algorithms and hyperparameters."""
