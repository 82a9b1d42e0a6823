"""`speakerid`: the operator's command line (serve, migrate, keys, rebuild-index, evaluate, enroll-bulk)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from service.config import Settings

if TYPE_CHECKING:
    from service.enrollment.maintenance import Twins
    from service.storage.repository import SqlStore


def _store(settings: Settings) -> SqlStore:
    from service.storage.database import open_migrated
    from service.storage.repository import SqlStore

    return SqlStore(open_migrated(settings.resolved_database_url()))


def _port(least: int) -> Callable[[str], int]:
    """An argparse type: a port number from `least` to 65535 (uvloop would wrap 70000 to 4464)."""

    def parse(text: str) -> int:
        try:
            port = int(text)
        except ValueError:
            port = -1
        if not least <= port <= 65535:
            raise argparse.ArgumentTypeError(f"{text!r} is not a port ({least}-65535)")
        return port

    return parse


def _bound_socket(host: str, port: int) -> socket.socket:
    """The HTTP address, taken now: uvicorn would bind it only after the application's start-up
    (the model's load, seconds), so a port in use was found late, and another process could take a
    free one meanwhile. uvicorn listens on this socket once the service is ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn's own bind
    sock = socket.socket(family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock  # not inheritable (Python's default): no child process holds the port


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.grpc_port is not None:
        realtime = settings.realtime.model_copy(update={"grpc_port": args.grpc_port})
        settings = settings.model_copy(update={"realtime": realtime, "host": args.host or settings.host})
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    try:  # first, before the seconds of importing the model's libraries
        sock = _bound_socket(host, port)
    except OSError as exc:
        print(f"speakerid serve: cannot serve on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    with sock:
        return _serve(sock, host, port, settings)


def _serve(sock: socket.socket, host: str, port: int, settings: Settings) -> int:
    import uvicorn

    from service.api.serving import uvicorn_config
    from service.embedding import weights
    from service.main import configure_logging, create_app

    _store(settings).engine.dispose()  # fail fast, with the fix in the message, before serving
    weights.resolve(settings.model_dir, settings.model_sha256)
    configure_logging(settings)
    app = create_app(settings)
    config = uvicorn_config(app, settings, host=host, port=port, timeout_graceful_shutdown=10)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and sockets:  # uvicorn says where it listens only for sockets of its own
                self._log_started_message(sockets)

    Server(config).run(sockets=[sock])
    return 0


def cmd_migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from service.storage.database import migrate

    migrate(settings.resolved_database_url())
    print("database is at the latest migration")
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    if args.keys_command == "create":
        key_id, secret = store.create_key(args.tenant)
        print(f"created key {key_id} for tenant {args.tenant}; the key is shown once:")
        print(secret)
    elif args.keys_command == "list":
        for key in store.list_keys():
            state = "revoked" if key.revoked else "active"
            print(f"{key.key_id}\t{key.tenant}\t{state}\t{key.created_at:%Y-%m-%d %H:%M}")
    elif args.keys_command == "revoke":
        if not store.revoke_key(args.key_id):
            print(f"no key {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
    elif args.keys_command == "ensure":
        if store.has_active_key():
            print("an active API key exists (speakerid keys list)")
        else:
            key_id, secret = store.create_key(args.tenant)
            print(f"created key {key_id} for tenant {args.tenant}; the key is shown once:")
            print(secret)
    return 0


def cmd_webhooks(args: argparse.Namespace, settings: Settings) -> int:
    from service.storage.jobs import SqlJobStore

    secret = SqlJobStore(_store(settings).engine).tenant_webhook_secret(args.tenant, rotate=args.rotate)
    if secret is None:
        print(f"no tenant {args.tenant}", file=sys.stderr)
        return 1
    # Stdout carries the secret alone, for scripts; what happened goes to stderr.
    print(f"{'new ' if args.rotate else ''}webhook signing secret of tenant {args.tenant}:", file=sys.stderr)
    print(secret)
    return 0


def cmd_rebuild_index(_args: argparse.Namespace, settings: Settings) -> int:
    from service.embedding import weights
    from service.enrollment.maintenance import recompute_all
    from service.main import enrollment_policy

    store = _store(settings)
    sha = weights.resolve(settings.model_dir, settings.model_sha256).sha256
    # Twins are made again only where the audio was kept, which needs the model.
    twins = _twins(settings) if settings.enrollment.narrowband_twins and store.keeps_audio() else None
    speakers, indexed = recompute_all(store, sha, enrollment_policy(settings), twins)
    print(f"recomputed {speakers} speakers from their samples; {indexed} have vectors of the current model")
    if twins is not None:
        print("narrowband twins made again from the stored audio")
    print("running replicas pick the changes up from the change log")
    return 0


def _twins(settings: Settings) -> Twins:
    from service.audio.frontend import AudioFrontEnd
    from service.embedding.bounded import BoundedEmbedding
    from service.enrollment.maintenance import Twins
    from service.main import load_embedder

    embedder = load_embedder(settings)
    audio = settings.audio
    frontend = AudioFrontEnd(
        max_seconds=audio.max_seconds,
        decode_timeout_s=audio.decode_timeout_s,
        vad_threshold=audio.vad_threshold,
        vad_narrowband_threshold=audio.vad_narrowband_threshold,
    )
    return Twins(frontend, BoundedEmbedding(embedder.embed_batch))


def tenant_name(value: str) -> str:
    """A tenant's name as the database holds it (128 characters), printable, without spaces at its
    ends; the console and `keys list` show it."""
    if not 1 <= len(value) <= 128 or value != value.strip() or not value.isprintable():
        raise argparse.ArgumentTypeError(
            "a tenant is named by 1 to 128 printable characters, without spaces at either end"
        )
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="speakerid", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=_port(1), help="1-65535 (SPK_PORT)")
    serve.add_argument(
        "--grpc-port",
        type=_port(0),
        help="also serve the realtime gRPC API on this port (SPK_REALTIME__GRPC_PORT)",
    )
    serve.set_defaults(run=cmd_serve)
    sub.add_parser("migrate", help="bring the database schema up to date").set_defaults(run=cmd_migrate)
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (and the tenant if new)")
    create.add_argument("--tenant", required=True, type=tenant_name)
    keys_sub.add_parser("list", help="list keys")
    revoke = keys_sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    ensure = keys_sub.add_parser("ensure", help="create a first key if there is no active one")
    ensure.add_argument("--tenant", default="default", type=tenant_name)
    keys.set_defaults(run=cmd_keys)
    webhooks = sub.add_parser("webhooks", help="webhook signing secrets")
    webhooks_sub = webhooks.add_subparsers(dest="webhooks_command", required=True)
    secret = webhooks_sub.add_parser(
        "secret", help="show a tenant's secret (made if it has none), or rotate it"
    )
    secret.add_argument("--tenant", required=True)
    secret.add_argument(
        "--rotate", action="store_true", help="replace it; deliveries from now on use the new one"
    )
    webhooks.set_defaults(run=cmd_webhooks)
    sub.add_parser("rebuild-index", help="recompute every speaker's vector from its samples").set_defaults(
        run=cmd_rebuild_index
    )
    from service.tools import register

    register(sub)
    return root


# OpenMP's threads spin at every barrier by default: beside other busy processes (replicas, other
# services) they burn the CPU the model needs. Measured here with 2 torch threads, a 10 s clip,
# fused int8, beside two other processes running 2-thread torch work: 268-274 ms per call spinning,
# 185-227 ms passive; alone, 109-121 ms either way. Set before torch loads; an operator's own wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from service.config import unknown_settings
    from service.errors import StartupError

    args = parser().parse_args(argv)
    for name in unknown_settings(os.environ):
        print(f"warning: {name} is not a setting of the service; it is ignored", file=sys.stderr)
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "SPK_" + "__".join(str(part) for part in error["loc"]).upper()
            print(f"error: {name}: {error['msg']}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # a group given whole as JSON that is no JSON
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        code: int = args.run(args, settings)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
