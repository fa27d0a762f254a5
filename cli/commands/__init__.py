"""Sub-commands of `promptcycle` contributed per phase.

Each module here defines `add_commands(subparsers, common)`: it adds its sub-parsers, calls
`common(parser)` on each (for --config, --store, --json) and sets `func=` to a function
`(args) -> int` (exit status). Import Prefect and flows inside those functions, not at module top.
"""

PHASE_MODULES = ("promptcycle_cli.commands.optimize", "promptcycle_cli.commands.deploy", "promptcycle_cli.commands.alerts",
                 "promptcycle_cli.commands.learning", "promptcycle_cli.commands.monitor", "promptcycle_cli.commands.report",
                 "promptcycle_cli.commands.api", "promptcycle_cli.commands.serve", "promptcycle_cli.commands.datasets",
                 "promptcycle_cli.commands.mirror")
