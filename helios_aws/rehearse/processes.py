"""Processes the rehearsal and the tests start: free ports, short commands, and
long-running servers that stop with everything they started."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


class StandInError(RuntimeError):
    """A stand-in could not be started, checked or stopped; the message says why."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port, or raise StandInError."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise StandInError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
        time.sleep(0.05)


def run(argv: Sequence[str | os.PathLike], **kwargs) -> subprocess.CompletedProcess:
    """Run a short command to completion; raise StandInError with its output if it fails."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    result = subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, **kwargs
    )
    if result.returncode != 0:
        raise StandInError(
            f"{' '.join(map(str, argv))} exited {result.returncode}\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/pid/stat after the command name (state first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def still_running(pid: int, start_time: str) -> bool:
    """Whether pid is the process that started at start_time and is not a zombie."""
    stat = _proc_stat(pid)
    return stat is not None and stat[19] == start_time and stat[0] != "Z"


def process_tree(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every live descendant of pid, including those that called
    setsid() (sshd's per-connection processes, postgres backends, Erlang's helpers)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        stat = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[0] != "Z":
            children.setdefault(int(stat[1]), []).append((int(entry.name), stat[19]))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child[0], []))
    return found


class Process:
    """A long-running subprocess with its output in a log file.

    It runs in a new session, under `setpriv --pdeathsig TERM` so that it ends if the
    test process dies, and `stop()` signals its process group, then kills whatever of
    its process tree is left.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ):
        self.argv = [str(arg) for arg in argv]
        self.log_path = Path(log_path)
        self.stop_signal = stop_signal
        self._stopped = False
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM", "--", *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                user=user,
                group=pwd.getpwnam(user).pw_gid if user else None,
                extra_groups=[] if user else None,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> StandInError:
        status = "running" if self.running() else f"exited {self.popen.returncode}"
        return StandInError(
            f"{what}: {self.argv[0]} ({status}); last lines of {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def wait_until(self, ready, what: str, timeout: float = 15.0) -> None:
        """Poll ready() until true; stop and raise with the log tail if the process
        exits first or the time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running() or time.monotonic() > deadline:
                error = self.failure(f"{what} (after {timeout:.0f} s)")
                self.stop()
                raise error
            time.sleep(0.05)

    def wait_for_port(self, host: str, port: int, timeout: float = 15.0) -> None:
        self.wait_until(
            lambda: port_open(host, port), f"nothing listens on {host}:{port}", timeout
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        tree = process_tree(self.pid) if self.running() else []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, self.stop_signal)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()
        left = [(pid, start) for pid, start in tree if still_running(pid, start)]
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(still_running(*proc) for proc in left) and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
