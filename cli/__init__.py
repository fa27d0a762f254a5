"""The `promptcycle` command line: parses arguments, starts Prefect's local server, runs the flows and prints.

It sits beside flows/, tasks/ and blocks/, outside the domain package, because it imports Prefect and the flows.
`promptcycle_cli.main:main` is the console script; `python -m promptcycle_cli.main` runs the same.
"""
