"""`promptcycle_flows`: the Prefect flows, one per phase, kept in the flows/ folder of the repository.

Installed (`pip install .` or `pip install -e .`), setup.py maps this name onto flows/ and this file is not used.
From a checkout on PYTHONPATH it points the package at flows/, so imports read the same either way and no
top-level `flows` package exists to shadow, or be shadowed by, a user's own.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent.parent / "flows")]
