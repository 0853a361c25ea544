"""Learned losses shipped with the package, read as `preset:<name>` (see losses.learned).

A package rather than a bare folder so that setuptools ships its JSON files as package data
without warning about an importable folder it would leave out.
"""
