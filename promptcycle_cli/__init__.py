"""`promptcycle_cli`: the `promptcycle` command line, kept in the cli/ folder of the repository.

Installed (`pip install .` or `pip install -e .`), setup.py maps this name onto cli/ and this file is not used.
From a checkout on PYTHONPATH it points the package at cli/, so imports read the same either way and no
top-level `cli` package exists to shadow, or be shadowed by, a user's own.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent.parent / "cli")]
