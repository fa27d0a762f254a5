"""`promptcycle_blocks`: the Prefect blocks (provider credentials), kept in the blocks/ folder of the repository.

Installed (`pip install .` or `pip install -e .`), setup.py maps this name onto blocks/ and this file is not used.
From a checkout on PYTHONPATH it points the package at blocks/, so imports read the same either way and no
top-level `blocks` package exists to shadow, or be shadowed by, a user's own.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent.parent / "blocks")]
