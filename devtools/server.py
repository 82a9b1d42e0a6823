"""`speakerid serve` as a child process: the one launcher of a server from outside.

The bench, the fuzz, soak and crash runs and the tests that need a separate process (its own memory,
its own log, a SIGKILL) all start the service through here; tests that look inside the running app
use the in-process server of tests/conftest.py instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from devtools.sets import REPO_ROOT

READY_TIMEOUT_S = 300.0


def server_env(data_dir: Path, inherit_settings: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a server on `data_dir`: CPU, rate limit off, plus `extra`.

    Other ``SPK_`` variables of this process are passed on only with `inherit_settings` (a bench
    on a GPU box needs its SPK_MODEL_DIR; a fuzz run wants the defaults whatever the shell has).
    """
    env = {k: v for k, v in os.environ.items() if inherit_settings or not k.startswith("SPK_")}
    env.update(
        SPK_DATA_DIR=str(data_dir),
        SPK_DATABASE_URL=f"sqlite:///{data_dir / 'speakerid.db'}",
        SPK_AUTH__RATE_LIMIT_PER_MINUTE="0",
        SPK_DEVICE="cpu",
    )
    env.update(extra)
    return env


def speakerid_command() -> list[str]:
    """The operator's command line: the installed `speakerid`, else the module."""
    script = Path(sys.executable).with_name("speakerid")
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def speakerid(env: dict[str, str], *args: str) -> str:
    """Run the operator's command line; its standard output."""
    done = subprocess.run(
        [*speakerid_command(), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout


def create_key(env: dict[str, str], tenant: str) -> str:
    """A new API key of `tenant` (created if new) in the database `env` names."""
    return speakerid(env, "keys", "create", "--tenant", tenant).strip().splitlines()[-1]


def proc_status_bytes(field: str, pid: int | str = "self") -> int:
    """A memory field of /proc/PID/status (VmRSS, VmHWM, ...) in bytes, Linux only."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def resident_bytes(pid: int | str = "self") -> int:
    """A process's resident set size (VmRSS)."""
    return proc_status_bytes("VmRSS", pid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_pids(port: int) -> set[int] | None:
    """The processes that hold a socket listening on TCP `port` (any address), from Linux's /proc;
    None where /proc cannot tell. Only this user's processes can be seen, which is enough to know
    whether a listener is one's own."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            return None
        for row in rows:
            fields = row.split()  # sl, local address:port (hex), remote, state (0A: LISTEN), ..., inode
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    owners = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                owners.add(int(fd.parts[2]))
    return owners


def process_group(pgid: int) -> set[int]:
    """The live processes of process group `pgid` (Linux's /proc)."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after it
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                members.add(int(stat.parts[2]))
    return members


class ServerProcess:
    """`speakerid serve` on a free loopback port, in its own process group so that a SIGKILL takes
    it and anything it started. Each `start` picks a new port and writes a new log in `log_dir`."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        command: list[str] | None = None,
        cwd: Path = REPO_ROOT,
        grpc: bool = False,
    ) -> None:
        """`command`: the `speakerid` to run (default: this environment's); `cwd`: where it runs;
        `grpc`: also serve gRPC, on a free port of its own (`grpc_target`)."""
        self.env = env
        self.grpc = grpc
        self.grpc_target = ""
        self.log_dir = log_dir
        self.command = command or speakerid_command()
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0
        self.log_path = log_dir / "server-0.log"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None, "start() first"
        return self.proc

    def start(self) -> None:
        """Start serving; returns at once (`wait_ready` before sending anything)."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        grpc_args: list[str] = []
        if self.grpc:
            grpc_port = free_port()
            self.grpc_target = f"127.0.0.1:{grpc_port}"
            grpc_args = ["--grpc-port", str(grpc_port)]
        self.log_path = self.log_dir / f"server-{self.starts}.log"
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*self.command, "serve", "--host", "127.0.0.1", "--port", str(port), *grpc_args],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, within_s: float = READY_TIMEOUT_S, port_retries: int = 3) -> float:
        """Wait for /readyz of this process; the seconds since `start`. A server that exits or is
        not ready in time raises, with its log's tail.

        `free_port` only finds a port free at that moment, and the server binds it once its Python
        has started, about a second later: another process may take it meanwhile (the other test
        process, a server it starts). A /readyz answered from the port then is not this server's:
        it counts only once this process group holds the listening socket. A server that exits
        because its port was taken is started again on a new one, up to `port_retries` times (`url`
        changes).
        """
        began = time.monotonic()
        with httpx.Client(timeout=5) as http:
            while True:
                if self.process.poll() is not None:
                    if port_retries > 0 and "address already in use" in self.log_tail().lower():
                        port_retries -= 1
                        self.start()
                        continue
                    raise RuntimeError(
                        f"speakerid serve exited ({self.process.returncode}):\n{self.log_tail()}"
                    )
                if time.monotonic() - began > within_s:
                    self.kill()
                    raise RuntimeError(f"speakerid serve not ready within {within_s:g} s:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.url}/readyz").status_code == 200 and self._owns_port():
                        return time.monotonic() - began
                time.sleep(0.1)

    def _owns_port(self) -> bool:
        """Whether the listener on `url`'s port is this server's (assumed where /proc cannot tell)."""
        owners = listening_pids(int(self.url.rsplit(":", 1)[1]))
        return owners is None or bool(owners & process_group(self.process.pid))

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), killed if it takes more than 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class LocalServer:
    """A started server on a database of its own, with one API key."""

    server: ServerProcess
    key: str
    data_dir: Path
    environment: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.server.process

    @property
    def log(self) -> Path:
        return self.server.log_path

    def env(self) -> dict[str, str]:
        """For `speakerid(...)` against this server's database."""
        return dict(self.environment)

    def wait_ready(self, within_s: float = READY_TIMEOUT_S) -> None:
        self.server.wait_ready(within_s)


@contextlib.contextmanager
def local_server(
    data_dir: Path | None = None,
    tenant: str = "local",
    inherit_settings: bool = False,
    *,
    ready: bool = False,
    **env_extra: str,
) -> Iterator[LocalServer]:
    """Migrate a fresh SQLite database, create a key, start serving; stopped on exit.

    Unless `ready`, it yields once the process is started, not once it is ready (`wait_ready`), so
    that a caller can load its own models meanwhile.
    """
    with contextlib.ExitStack() as stack:
        folder = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="speakerid-")))
        env = server_env(folder, inherit_settings, **env_extra)
        speakerid(env, "migrate")
        key = create_key(env, tenant)
        server = ServerProcess(env, folder)
        server.start()
        try:
            if ready:
                server.wait_ready()
            yield LocalServer(server, key, folder, env)
        finally:
            server.stop()
