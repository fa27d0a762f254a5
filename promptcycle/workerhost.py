"""The data-worker host: a process with the data worker's libraries already imported, which forks a
worker for each command that asks.

A data worker (promptcycle/dataworker.py) started from scratch imports DuckDB, pandas and Great
Expectations: ~5 s of CPU, most of it while a baseline's calls are in flight, on a machine whose other
core runs the event loop. The host pays that once. A command connects to the host's Unix socket in
its directory (the CLI uses the Prefect home), sends its environment, working directory, pid and
standard error; the host forks a child that takes them over and then serves the command exactly as a
`python -m promptcycle.dataworker` process would, over the socket instead of pipes. The child is the
command's own worker: its own stores, its own Great Expectations context (a copy of the host's), ended
when the command's end of the socket closes or the command's pid is gone, as a piped worker is.

- The socket's name carries a fingerprint (`fingerprint()`): the interpreter, promptcycle's sources, the
  libraries, the environment that configures Python and Prefect at import and the working directory's Prefect
  settings files. After an upgrade or an edit, or with other settings, commands ask a new host, and the old one
  idles out. A host whose own fingerprint differs from the name it was started for does not serve.
- A command that finds no host uses a piped worker and, when it ends, starts a host in its own session
  (`python -m promptcycle.workerhost`, or the command line's host, promptcycle_cli/host.py, which also runs
  whole commands in its forks: `connect_command`): the next command finds it. One host per name (a lock file).
- The host stops after `PROMPTCYCLE_SERVER_IDLE_SECONDS` (default 300) without a connection (never while a
  command it forked runs), or within a second of its socket file being removed (its directory removed, say).
- Only the socket's owner may connect (the directory is the user's; the host also checks the peer's uid).

Linux and macOS only (fork, Unix sockets); elsewhere, and with `PROMPTCYCLE_WORKER_HOST=0`, every
command uses a piped worker.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from collections.abc import Callable
from typing import Any

__all__ = ["HostedWorker", "Adopted", "enabled", "socket_path", "connect", "connect_command", "start", "host",
           "fingerprint", "idle_seconds", "DEFAULT_IDLE_SECONDS"]

DEFAULT_IDLE_SECONDS = 300.0
_MAX_SOCKET_PATH = 100  # sun_path holds 104-108 bytes, depending on the system
_PACKAGES = ("promptcycle", "promptcycle_cli", "promptcycle_flows", "promptcycle_tasks", "promptcycle_blocks")
_LIBRARIES = ("duckdb", "pandas", "pyarrow", "numpy", "great_expectations", "prefect")
# read when Python, Prefect or a native library is loaded (OpenMP, BLAS, the allocator, the dynamic linker)
_ENVIRONMENT_PREFIXES = ("PREFECT_", "PYTHON", "LC_", "OMP_", "OPENBLAS_", "MKL_", "MALLOC_", "LD_")
_ENVIRONMENT = frozenset({"LANG", "LANGUAGE", "HOME", "TMPDIR", "PROMPTCYCLE_WORKER_HOST"})
_HEADER = struct.Struct("!Q")


def enabled() -> bool:
    return (hasattr(os, "fork") and hasattr(socket, "AF_UNIX")
            and os.environ.get("PROMPTCYCLE_WORKER_HOST", "1").lower() not in {"0", "false", "no", "off"})


def fingerprint() -> str:
    """What a host's imported code and settings depend on: the interpreter, promptcycle's sources (paths, sizes,
    modification times, the command line's and flows' packages included), the libraries' locations, the
    environment that configures Python and Prefect at import (`PYTHON*`, `PREFECT_*`, the locale) and the Prefect
    settings files of the working directory (`.env`, `prefect.toml`, a `pyproject.toml` with `[tool.prefect]`)."""
    digest = hashlib.sha256()
    for part in (sys.executable, sys.version):
        digest.update(part.encode() + b"\0")
    for name in _PACKAGES:
        try:
            roots = import_module(name).__path__  # their __init__ files import nothing
        except ImportError:
            roots = []
        for root in map(Path, roots):
            for path in sorted(root.rglob("*.py")):
                stat = path.stat()
                digest.update(f"{name}/{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\0".encode())
    for name in _LIBRARIES:
        spec = find_spec(name)
        origin = spec.origin if spec is not None and spec.origin else ""
        mtime = os.stat(origin).st_mtime_ns if origin else 0
        digest.update(f"{name}:{origin}:{mtime}\0".encode())
    for key in sorted(os.environ):
        if key.startswith(_ENVIRONMENT_PREFIXES) or key in _ENVIRONMENT:
            digest.update(f"{key}={os.environ[key]}\0".encode())
    for name in (".env", "prefect.toml", "pyproject.toml"):
        try:
            content = Path(name).read_bytes()
        except OSError:
            continue
        if name != "pyproject.toml" or b"tool.prefect" in content:
            digest.update(name.encode() + b"\0" + content)
    return digest.hexdigest()[:16]


def socket_path(directory: Path, key: str | None = None) -> Path:
    return Path(directory) / f"promptcycle-worker-{key or fingerprint()}.sock"


def _send(sock: socket.socket, payload: Any) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _receive(sock: socket.socket) -> Any:
    """One message, read exactly (no read-ahead: what follows on the socket is the caller's)."""
    (size,) = _HEADER.unpack(_read_exactly(sock, _HEADER.size))
    return pickle.loads(_read_exactly(sock, size))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def _peer_uid(sock: socket.socket) -> int | None:
    if hasattr(socket, "SO_PEERCRED"):
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
        return uid
    getpeereid = getattr(socket, "getpeereid", None)
    return getpeereid(sock.fileno())[0] if getpeereid else None


# -- the command's side -------------------------------------------------------------------------------------------

class HostedWorker:
    """A worker forked by the host: what `dataworker` needs of a `subprocess.Popen` (pid, stdin, stdout,
    poll, wait, kill), over the socket."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.pid = pid
        self._socket = sock
        self.stdin = _Requests(sock)
        self.stdout = sock.makefile("rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """None while the worker's end of the socket is open; 0 once it has closed (the worker ended)."""
        if self.returncode is None:
            try:
                gone = self._socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if gone:
                self._close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"data worker {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        self.returncode = 0 if self.returncode is None else self.returncode
        for stream in (self.stdin, self.stdout, self._socket):
            try:
                stream.close()
            except OSError:
                pass


class _Requests:
    """The worker's request stream; closing it ends the worker (it reads end-of-file), as closing a pipe would."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._stream = sock.makefile("wb")

    def write(self, data: bytes) -> int:
        return self._stream.write(data)

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        try:
            self._stream.close()
            self._socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def connect(directory: Path, key: str | None = None) -> HostedWorker | None:
    """A worker forked for this process by the host in `directory`, or None when no host serves there."""
    try:
        stderr = sys.stderr.fileno()  # its warnings go where ours do
    except (OSError, ValueError, AttributeError):
        stderr = 2  # sys.stderr is no file (captured by a test, say): where a piped worker's would go
    opened = _open(directory, key, {"kind": "worker"}, [stderr])
    return None if opened is None else HostedWorker(*opened)


def connect_command(directory: Path, argv: list[str], key: str | None = None) -> tuple[socket.socket, int] | None:
    """Ask the host in `directory` to run the command `argv` in a fork of itself, on this process's standard
    streams: (the socket, the fork's pid), or None when no host that runs commands serves there. The fork
    sends `{"exit": status}` (negative: ended by that signal) when it ends; closing the socket kills it."""
    request = {"kind": "command", "argv": list(argv), "argv0": sys.argv[0], "path0": sys.path[0] if sys.path else None}
    return _open(directory, key, request, [0, 1, 2])


def _open(directory: Path, key: str | None, request: dict, fds: list[int]) -> tuple[socket.socket, int] | None:
    path = socket_path(directory, key)
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH or not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        sock.connect(os.fsencode(path))
        if _peer_uid(sock) not in (None, os.getuid()):
            raise ConnectionRefusedError(f"{path} is served by another user")
        _send(sock, {**request, "env": dict(os.environ), "cwd": os.getcwd(), "pid": os.getpid(), "umask": _umask(),
                     **_limits()})
        socket.send_fds(sock, [b"f"], fds)
        pid = _receive(sock)
        if not isinstance(pid, int):
            raise ConnectionRefusedError(f"{path}: {pid}")  # e.g. a host that runs no commands
        sock.settimeout(None)
        return sock, pid
    except (OSError, EOFError, pickle.UnpicklingError, ValueError):
        sock.close()
        return None


def _limits() -> dict[str, Any]:
    """What the process's own limits are, for its fork to take: resource limits (`ulimit`), priority (`nice`),
    CPU affinity (`taskset`)."""
    import resource

    names = ("RLIMIT_NOFILE", "RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_NPROC")
    limits: dict[str, Any] = {"rlimits": {name: resource.getrlimit(getattr(resource, name))
                                          for name in names if hasattr(resource, name)}}
    try:
        limits["priority"] = os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):
        pass
    if hasattr(os, "sched_getaffinity"):
        limits["affinity"] = sorted(os.sched_getaffinity(0))
    return limits


def _take_limits(request: dict) -> None:
    import resource

    for name, value in request.get("rlimits", {}).items():
        try:
            resource.setrlimit(getattr(resource, name), tuple(value))
        except (ValueError, OSError, AttributeError):
            pass  # e.g. a hard limit above the host's (only lowering is allowed)
    try:
        if request.get("priority") is not None:
            os.setpriority(os.PRIO_PROCESS, 0, request["priority"])
    except OSError:
        pass  # a higher priority than the host's needs privileges
    try:
        if request.get("affinity"):
            os.sched_setaffinity(0, request["affinity"])
    except (OSError, AttributeError):
        pass


def _umask() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return None


def start(directory: Path, module: str = "promptcycle.workerhost", key: str | None = None,
          env: dict[str, str] | None = None) -> None:
    """Start a host for this code in `directory`, in its own session: `python -m <module> DIRECTORY KEY` (the
    command line's host, promptcycle_cli/host.py, also runs commands). `key` and `env`: the fingerprint and the
    environment it was taken in (default: now). Called when no host answered: if one is serving after all, the
    new one finds the lock taken and leaves; a dead one's socket file is replaced."""
    env = dict(os.environ if env is None else env)
    key = key or fingerprint()
    if len(os.fsencode(socket_path(directory, key))) > _MAX_SOCKET_PATH:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    env.pop("PROMPTCYCLE_DATA_IN_PROCESS", None)
    with open(Path(directory) / "promptcycle-worker-host.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", module, str(directory), key], env=env,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)


# -- the host's side ----------------------------------------------------------------------------------------------

def _preload() -> None:
    """Import what a worker's calls need, and make Great Expectations' context, in this (only) thread."""
    from promptcycle import dataworker

    dataworker.preload()


class Adopted:
    """In a fork of a host that runs commands: the command to run here (see promptcycle_cli/host.py)."""

    def __init__(self, conn: socket.socket, request: dict) -> None:
        self.conn, self.request = conn, request


def _take_over(conn: socket.socket, request: dict, targets: list[int]) -> None:
    """In the forked child: take the requesting process's streams (onto `targets`), environment, working
    directory, umask, time zone and limits, and tell it this pid."""
    _msg, fds, _flags, _addr = socket.recv_fds(conn, 1, len(targets))
    for fd, target in zip(fds, targets):
        os.dup2(fd, target)
    for fd in fds:
        if fd not in targets:
            os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()  # the command's TZ, for the timestamps written
    if request.get("umask") is not None:
        os.umask(request["umask"])  # files created (stores, caches, logs) get the command's permissions
    os.chdir(request["cwd"])
    _take_limits(request)
    _send(conn, os.getpid())


def _serve_worker(conn: socket.socket, request: dict) -> None:
    """In the forked child: become the requesting command's data worker."""
    import signal

    from promptcycle import dataworker

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a piped worker: Ctrl-C is the command's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _take_over(conn, request, [2])  # the command's stderr
    os.dup2(2, 1)  # stray prints must not corrupt the reply stream
    os.environ["PROMPTCYCLE_DATA_IN_PROCESS"] = "1"
    command = request["pid"]
    threading.Thread(target=dataworker.exit_when, args=(lambda: not _alive(command),),
                     name="command-watch", daemon=True).start()
    with conn.makefile("rb") as requests, conn.makefile("wb") as replies:
        dataworker.serve(requests, replies)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's (the pid was reused)
    return True


def idle_seconds() -> float:
    """`PROMPTCYCLE_SERVER_IDLE_SECONDS`: how long the host (and the CLI's local Prefect server) may stay idle."""
    raw = os.environ.get("PROMPTCYCLE_SERVER_IDLE_SECONDS", "")
    try:
        return max(1.0, float(raw)) if raw else DEFAULT_IDLE_SECONDS
    except ValueError:
        return DEFAULT_IDLE_SECONDS


def host(directory: Path, key: str, preload: Callable[[], None] = _preload,
         commands: bool = False) -> int | Adopted:
    """The host's life: lock, preload, listen, fork a child per connection, stop when idle or unlinked.

    Returns the host's exit status; with `commands`, in a child forked for a command, returns that command
    (`Adopted`) for the caller to run there, outside this loop."""
    import fcntl

    directory = Path(directory)
    lock = open(directory / f"promptcycle-worker-{key}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another host serves this name
    if fingerprint() != key:
        print(f"promptcycle host: this interpreter's code or settings differ from {key}; not serving",
              file=sys.stderr)
        return 1
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no BLAS thread pool in a process that forks
    started = time.monotonic()
    preload()
    path = socket_path(directory, key)
    path.unlink(missing_ok=True)  # a killed host's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        listener.bind(os.fsencode(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    listener.settimeout(1.0)
    inode = path.stat().st_ino
    print(f"promptcycle host {key}: serving at {path} (pid {os.getpid()}, "
          f"ready in {time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
    idle, last = idle_seconds(), time.monotonic()
    running: dict[int, socket.socket] = {}  # commands' forks: their sockets, to report how they ended
    me = os.getpid()
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                conn = None
            _reap(running)
            if conn is None:
                try:
                    if path.stat().st_ino != inode:
                        return 0  # replaced
                except FileNotFoundError:
                    return 0  # removed
                if time.monotonic() - last > idle and not running:
                    return 0
                continue
            last = time.monotonic()
            try:
                if _peer_uid(conn) not in (None, os.getuid()):
                    raise ConnectionRefusedError("another user")
                conn.settimeout(5.0)
                request = _receive(conn)
                kind = request.get("kind", "worker")
                if kind not in ("worker", "command") or (kind == "command" and not commands):
                    _send(conn, f"this host runs no {kind}s")
                    raise ConnectionRefusedError(kind)
                conn.settimeout(None)
            except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError):
                conn.close()
                continue
            child = os.fork()
            if child == 0:
                listener.close()
                lock.close()  # the host's lock stays the host's
                for other in running.values():
                    other.close()
                if kind == "command":
                    return Adopted(conn, request)
                code = 0
                try:
                    _serve_worker(conn, request)
                except BaseException:  # noqa: BLE001 - the command sees its end of the socket close
                    code = 1
                sys.stderr.flush()
                os._exit(code)
            if kind == "command":
                running[child] = conn
            else:
                conn.close()
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {kind} {child} forked", file=sys.stderr, flush=True)
    finally:
        if os.getpid() == me:
            try:
                if path.stat().st_ino == inode:
                    path.unlink()
            except FileNotFoundError:
                pass


def _reap(running: dict[int, socket.socket]) -> None:
    """Collect the children that ended; tell a command's client how its command ended (if it has not yet
    heard it from the command itself: a signal, say)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is not None:
            try:
                conn.setblocking(False)
                _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            except OSError:
                pass  # the client has gone, or heard it already
            conn.close()


if __name__ == "__main__":
    sys.exit(host(Path(sys.argv[1]), sys.argv[2]))
