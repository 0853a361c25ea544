"""What the `domainbed.plugins` entry point calls: register the ITL algorithms."""


def register() -> None:
    """Import the module whose import registers ITL's algorithms and hyperparameters."""
    import domainbed_itl.algorithms.engine  # noqa: F401
