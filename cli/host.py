"""The command host: the data-worker host of promptcycle/workerhost.py, with Prefect, the flows and this command
line imported too, which also runs each flow command in a fork of itself.

A flow command (`baseline`, `optimize`, `deploy`, `canary`, `monitor`, `cycle`, `report`) started from scratch
imports Prefect and the flows before its flow can start: 1.3–2 s of CPU, all of it before the first model call.
The host pays that once. When `promptcycle <flow command>` finds the host of its Prefect home serving (one per
fingerprint: the code, the interpreter, the `PREFECT_*`, `PYTHON*` and locale environment, the working
directory's Prefect settings files), it sends its arguments, environment, working directory, umask and standard
streams (the file descriptors themselves, over the Unix socket), and the host forks a child that takes them over
and runs the command exactly as the command would have: same output on the same terminal or pipes, same files,
same exit status. Meanwhile the `promptcycle` process only relays: signals it receives (Ctrl-C, Ctrl-Z, `kill`,
a resized terminal) go to the child; the child's exit status (or the signal that ended it) becomes its own; if
it is killed (`kill -9`), the child ends at once too, as the command itself would have.

With no host serving, the command runs in its own process as before, and starts the host as it ends
(`start_missing_host` in promptcycle/dataworker.py), for the next command. `PROMPTCYCLE_WORKER_HOST=0` turns
both hosts off. In `ps`, a command run this way appears as a `python -m promptcycle_cli.host` process (a
fork of the host), with the `promptcycle` process that started it waiting beside it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from promptcycle import workerhost

__all__ = ["run_hosted", "prefect_home_directory", "MODULE"]

MODULE = "promptcycle_cli.host"
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")


def prefect_home_directory() -> Path:
    """Where the hosts live: the Prefect home (`PREFECT_HOME`, default ~/.prefect)."""
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


# -- the promptcycle process's side -------------------------------------------------------------------------------

def run_hosted(argv: list[str], flow_commands: frozenset[str]) -> int | None:
    """Run `promptcycle ARGV` in a fork of the host, if it is a flow command and the host serves: its exit
    status. None: run it here."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command not in flow_commands or not workerhost.enabled():
        return None
    opened = workerhost.connect_command(prefect_home_directory(), argv)
    if opened is None:
        return None
    sock, pid = opened

    def forward(signum: int, _frame) -> None:
        try:
            os.kill(pid, signum)
        except OSError:
            pass

    def suspend(_signum: int, _frame) -> None:  # Ctrl-Z: stop the command, then this process, until continued
        forward(signal.SIGSTOP, None)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, suspend)
        forward(signal.SIGCONT, None)

    for name in _FORWARDED:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), forward)
    if hasattr(signal, "SIGTSTP"):
        signal.signal(signal.SIGTSTP, suspend)
    try:
        status = workerhost._receive(sock).get("exit", 1)
    except (OSError, EOFError, ValueError, AttributeError):
        print("promptcycle: the command's process ended without an exit status (see "
              f"{prefect_home_directory() / 'promptcycle-worker-host.log'})", file=sys.stderr)
        return 1
    finally:
        sock.close()
    if status < 0:  # ended by a signal: end the same way
        for name in _FORWARDED:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


# -- the host's side ----------------------------------------------------------------------------------------------

def _preload() -> None:
    """The data worker's libraries (workerhost's preload), then Prefect, this command line and the flows its
    commands run, imported in this (only) thread."""
    from promptcycle import dataworker

    dataworker.preload()
    from promptcycle_cli import main as cli

    cli._apply_offline_defaults()
    cli.build_parser()  # imports the commands' modules
    import rich.console  # noqa: F401
    import rich.progress  # noqa: F401
    import rich.table  # noqa: F401

    import promptcycle_flows.baseline  # noqa: F401
    import promptcycle_flows.canary  # noqa: F401
    import promptcycle_flows.cycle  # noqa: F401
    import promptcycle_flows.deployment  # noqa: F401
    import promptcycle_flows.monitor  # noqa: F401
    import promptcycle_flows.optimization  # noqa: F401
    import promptcycle_flows.report  # noqa: F401
    import promptcycle_tasks.runs  # noqa: F401
    from promptcycle_cli import local_server  # noqa: F401
    stray = [thread.name for thread in threading.enumerate() if thread is not threading.main_thread()]
    if stray:  # a thread would not survive the forks (and might hold a lock they need)
        raise RuntimeError(f"threads running after the preload: {stray}")


def _run(adopted: workerhost.Adopted) -> int:
    """In the fork: become the command (its streams, environment, directory) and run it; report its status."""
    import atexit

    conn, request = adopted.conn, adopted.request
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in _FORWARDED[1:]:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    workerhost._take_over(conn, request, [0, 1, 2])
    sys.argv = [request.get("argv0") or "promptcycle", *request["argv"]]
    if sys.path and request.get("path0") is not None:
        sys.path[0] = request["path0"]  # the command's script directory (or working directory), not the host's
    sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())  # as Python sets stdout up at start-up
    import prefect.context

    prefect.context.refresh_global_settings_context()  # the settings as the command's own process reads them
    outcome: dict = {"code": 1, "reported": False}

    def report() -> None:  # registered first, so it runs after the exit handlers registered by the command
        outcome["reported"] = True
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            workerhost._send(conn, {"exit": outcome["code"]})
        except OSError:
            pass

    def watch() -> None:  # the promptcycle process gone (killed): end as the command would have, with it
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        if not outcome["reported"]:
            os.kill(os.getpid(), signal.SIGKILL)

    atexit.register(report)
    threading.Thread(target=watch, name="promptcycle-client-watch", daemon=True).start()
    from promptcycle_cli.main import main

    try:
        outcome["code"] = main(request["argv"])
    except SystemExit as exc:  # argparse's usage errors, --help
        outcome["code"] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    return outcome["code"]


if __name__ == "__main__":
    _outcome = workerhost.host(Path(sys.argv[1]), sys.argv[2], preload=_preload, commands=True)
    sys.exit(_outcome if isinstance(_outcome, int) else _run(_outcome))
