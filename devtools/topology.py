"""The scaled-out deployment of deploy/compose.yaml without Docker: `speakerid serve` replicas on
one database, behind Debian's nginx on loopback, configured from deploy/nginx.conf.template.

The scale-out test and `python -m scripts.scale_out` run it; `render_nginx` also writes the
committed deploy/nginx.conf (a test checks the two agree).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from devtools.clips import encode_recipe, load_clip, manifest
from devtools.server import ServerProcess, create_key, free_port, server_env, speakerid
from devtools.sets import REPO_ROOT
from service.config import AudioSettings

DEPLOY = REPO_ROOT / "deploy"
TEMPLATE = DEPLOY / "nginx.conf.template"
# The body limit nginx enforces is the service's own default.
MAX_BODY_BYTES = AudioSettings().max_request_bytes
# What deploy/compose.yaml's nginx gets: the compose service names, the official image's paths.
COMPOSE = {
    "USER": "user nginx;",
    "STATE": "/var/cache/nginx",
    "ERROR_LOG": "/dev/stderr",
    "ACCESS_LOG": "/dev/stdout",
    "LISTEN": "80",
    "GRPC_LISTEN": "50051",
}
COMPOSE_REPLICAS = ("speakerid-1:8000", "speakerid-2:8000")
COMPOSE_GRPC_REPLICAS = ("speakerid-1:50051", "speakerid-2:50051")


def render_nginx(
    values: dict[str, str],
    servers: Sequence[str],
    grpc_servers: Sequence[str],
    max_body_bytes: int = MAX_BODY_BYTES,
) -> str:
    """The template with `values` and one `server` line per `host:port` of `servers` (HTTP) and of
    `grpc_servers` (the same replicas' gRPC ports)."""

    def lines(addresses: Sequence[str]) -> str:
        return "\n".join(f"    server {s} max_fails=1 fail_timeout=5s;" for s in addresses)

    text = TEMPLATE.read_text()
    filled = {
        **values,
        "SERVERS": lines(servers),
        "GRPC_SERVERS": lines(grpc_servers),
        "MAX_BODY_BYTES": str(max_body_bytes),
    }
    for name, value in filled.items():
        text = text.replace("{{" + name + "}}", value)
    if "{{" in text:
        raise ValueError(f"unfilled placeholder in {TEMPLATE}: {text[text.index('{{') :][:40]}")
    return text


def compose_nginx() -> str:
    """deploy/nginx.conf as it must read."""
    return render_nginx(COMPOSE, COMPOSE_REPLICAS, COMPOSE_GRPC_REPLICAS)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def missing_reason() -> str:
    return "no nginx: install Debian's 'nginx-light' (scripts/tools.sh)"


class Nginx:
    """nginx on free loopback ports in front of `servers` (``host:port``) and their gRPC ports
    `grpc_servers`, from the template."""

    def __init__(self, folder: Path, servers: Sequence[str], grpc_servers: Sequence[str]) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError(missing_reason())
        self.binary = binary
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{free_port()}"
        self.conf = folder / "nginx.conf"
        self.access_log = folder / "access.log"
        self.error_log = folder / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.configure(servers, grpc_servers)

    def configure(self, servers: Sequence[str], grpc_servers: Sequence[str]) -> None:
        """Write the configuration for `servers`; a running nginx takes it up on `reload`."""
        values = {
            # Workers as this user: they write request bodies under the test's own folder.
            "USER": f"user {getpass.getuser()};" if os.getuid() == 0 else "",
            "STATE": str(self.folder),
            "ERROR_LOG": str(self.error_log),
            "ACCESS_LOG": str(self.access_log),
            "LISTEN": f"127.0.0.1:{self.port}",
            "GRPC_LISTEN": self.grpc_target,
        }
        self.conf.write_text(render_nginx(values, servers, grpc_servers))

    def start(self) -> None:
        with (self.folder / "stderr.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.folder), "-c", str(self.conf), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

    def reload(self) -> None:
        """Read the configuration again: new workers take it, old ones finish what they hold."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)
        time.sleep(1.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def upstreams(self) -> list[str]:
        """The replica (``host:port``) that served each logged request, in order; a request that
        tried two lists both, comma-separated."""
        found = []
        for line in self.access_log.read_text().splitlines():
            if " upstream=" in line:
                found.append(line.split(" upstream=", 1)[1].split(" upstream_status=", 1)[0])
        return found


@dataclass
class Topology:
    """Replicas on one database behind nginx; `url` is nginx's, `key` a key of tenant "scale"."""

    nginx: Nginx
    replicas: list[ServerProcess]
    key: str
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.nginx.url

    def address(self, replica: ServerProcess) -> str:
        return replica.url.removeprefix("http://")


@contextlib.contextmanager
def scale_out(
    database_url: str, replicas: int = 2, folder: Path | None = None, torch_threads: int = 1, **env_extra: str
) -> Iterator[Topology]:
    """Migrate the database, create a key, start `replicas` servers on it and nginx in front of
    all of them; everything is stopped on exit."""
    with contextlib.ExitStack() as stack:
        root = folder or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="speakerid-scale-")))
        root.mkdir(parents=True, exist_ok=True)
        extra = {"SPK_DATABASE_URL": database_url, "SPK_TORCH_THREADS": str(torch_threads), **env_extra}
        env = server_env(root, False, **extra)
        speakerid(env, "migrate")
        key = create_key(env, "scale")
        servers = []
        for i in range(replicas):
            data = root / f"replica-{i}"
            data.mkdir(parents=True, exist_ok=True)
            servers.append(ServerProcess(server_env(data, False, **extra), data, grpc=True))
        for server in servers:
            stack.callback(server.stop)
            server.start()
        for server in servers:
            server.wait_ready()
        addresses = [s.url.removeprefix("http://") for s in servers]
        nginx = Nginx(root / "nginx", addresses, [s.grpc_target for s in servers])
        stack.callback(nginx.stop)
        nginx.start()
        wait_through(nginx.url)
        yield Topology(nginx, servers, key, env)


def wait_through(url: str, within_s: float = 30.0) -> None:
    """Until /readyz answers 200 at `url`."""
    began = time.monotonic()
    with httpx.Client(timeout=5) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{url}/readyz").status_code == 200:
                    return
            if time.monotonic() - began > within_s:
                raise RuntimeError(f"{url}/readyz not answering 200 within {within_s:g} s")
            time.sleep(0.1)


@dataclass(frozen=True)
class Outcome:
    """One request's fate: when it was sent and answered (time.monotonic), and the status (None:
    no HTTP answer at all)."""

    what: str
    start: float
    end: float
    status: int | None
    body: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400


def post(http: httpx.Client, what: str, path: str, body: dict[str, object]) -> Outcome:
    """POST `body` as JSON to `path`; a transport error is an outcome too (status None), not an
    exception."""
    start = time.monotonic()
    try:
        answer = http.post(path, json=body)
    except httpx.HTTPError as exc:
        return Outcome(what, start, time.monotonic(), None, f"{type(exc).__name__}: {exc}")
    return Outcome(what, start, time.monotonic(), answer.status_code, answer.text[:300])


def client(url: str, key: str, timeout_s: float = 300.0) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=timeout_s)


def identify_throughput(
    url: str, key: str, bodies: Sequence[dict[str, object]], clients: int, seconds: float
) -> float:
    """Answered /v1/identify requests per second through `url`, `clients` sending back to back for
    `seconds` (requests still running at the end are not counted)."""
    deadline = time.monotonic() + seconds
    done: list[Outcome] = []

    def loop(offset: int) -> None:
        with client(url, key) as http:
            i = offset
            while time.monotonic() < deadline:
                outcome = post(http, "identify", "/v1/identify", bodies[i % len(bodies)])
                if outcome.end <= deadline:
                    done.append(outcome)
                i += 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    failed = [o for o in done if not o.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} identify requests failed, e.g. {failed[0]}")
    return len(done) / seconds


def speech_bodies(speakers: int, seconds: float | None = None) -> list[tuple[str, dict[str, object]]]:
    """(speaker, JSON audio body) for one clip of each of `speakers` eval-speech speakers (their
    longest under 16 s), cut to its first `seconds` if given, as FLAC."""
    best: dict[str, tuple[float, str]] = {}
    for c in manifest():
        if c.duration_s < 16 and c.duration_s > best.get(c.speaker, (0.0, ""))[0]:
            best[c.speaker] = (c.duration_s, c.path)
    chosen = sorted(best.items())[:speakers]
    bodies: list[tuple[str, dict[str, object]]] = []
    for speaker, (_, path) in chosen:
        clip = load_clip(path)
        samples = clip.samples if seconds is None else clip.samples[: int(seconds * clip.sample_rate)]
        audio = encode_recipe(samples, clip.sample_rate, "flac")
        bodies.append((speaker, {"content": base64.b64encode(audio).decode(), "encoding": "FLAC"}))
    return bodies


def one_and_two_replicas(
    database_url: str, seconds: float = 30.0, clients: int = 4, folder: Path | None = None
) -> tuple[float, float]:
    """Identify throughput (requests/s) through nginx with one replica behind it, then two, in
    one run on one database holding a few enrolled speakers."""
    with (
        scale_out(database_url, replicas=2, folder=folder) as topology,
        client(topology.url, topology.key) as http,
    ):
        for speaker, body in speech_bodies(8):
            answer = http.post(f"/v1/speakers/{speaker}/enrollments", json=body)
            answer.raise_for_status()
        probes = [body for _, body in speech_bodies(8, seconds=4.0)]
        rates = []
        for count in (1, 2):
            chosen = topology.replicas[:count]
            topology.nginx.configure([topology.address(r) for r in chosen], [r.grpc_target for r in chosen])
            topology.nginx.reload()
            identify_throughput(topology.url, topology.key, probes, clients, min(5.0, seconds))  # warm-up
            rates.append(identify_throughput(topology.url, topology.key, probes, clients, seconds))
        return rates[0], rates[1]


def main() -> int:
    """`python -m scripts.scale_out`."""
    parser = argparse.ArgumentParser(
        description="Identify throughput through nginx with one replica, then two"
    )
    parser.add_argument("--database", help="SQLAlchemy URL of an empty database (default: a new SQLite file)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring time per configuration")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="speakerid-scale-") as folder:
        url = args.database or f"sqlite:///{Path(folder) / 'speakerid.db'}"
        one, two = one_and_two_replicas(url, args.seconds, args.clients, Path(folder))
    print(f"one replica:  {one:.2f} identify requests/s")
    print(f"two replicas: {two:.2f} identify requests/s")
    print(f"ratio: {two / one:.2f}")
    return 0
