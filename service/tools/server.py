"""`speakerid serve` as a subprocess on a fresh SQLite database with one key: how the bench loads
the service from outside, and how the fuzz and soak scripts try to break it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


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


def speakerid(env: dict[str, str], *args: str) -> str:
    """Run the operator's command line; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalServer:
    url: str
    key: str
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    environment: dict[str, str]

    def env(self) -> dict[str, str]:
        """For `speakerid(...)` against this server's database."""
        return dict(self.environment)

    def wait_ready(self, within_s: float = 300.0) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"the server was not ready within {within_s:g} s")


@contextlib.contextmanager
def local_server(
    data_dir: Path | None = None, tenant: str = "local", inherit_settings: bool = False, **env_extra: str
) -> Iterator[LocalServer]:
    """Migrate, create a key, start serving on a free loopback port; stopped on exit.

    It yields once the process is started, not once it is ready (`wait_ready`), so that a caller
    can load its own models meanwhile.
    """
    with contextlib.ExitStack() as stack:
        folder = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="speakerid-")))
        env = server_env(folder, inherit_settings, **env_extra)
        speakerid(env, "migrate")
        key = speakerid(env, "keys", "create", "--tenant", tenant).strip().splitlines()[-1]
        port = free_port()
        log = folder / "server.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                cwd=REPO,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            yield LocalServer(f"http://127.0.0.1:{port}", key, process, log, folder, env)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
