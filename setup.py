"""Packages of promptcycle: the domain package, and the repository's orchestration folders under prefixed names.

flows/, tasks/, blocks/ and cli/ stay at the top of the repository, but install as `promptcycle_flows`,
`promptcycle_tasks`, `promptcycle_blocks` and `promptcycle_cli`: promptcycle installs no top-level `flows`
or `tasks` package that would shadow, or be shadowed by, a user's own. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {"promptcycle_flows": "flows", "promptcycle_tasks": "tasks", "promptcycle_blocks": "blocks",
           "promptcycle_cli": "cli"}

packages = find_packages(include=["promptcycle", "promptcycle.*"])
package_dir = {}
for name, folder in FOLDERS.items():
    packages += [name, *(f"{name}.{sub}" for sub in find_packages(where=folder))]
    package_dir[name] = folder

setup(packages=packages, package_dir=package_dir)
