"""Command-line entry points of the ITL extension."""
