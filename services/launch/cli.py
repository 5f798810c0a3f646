"""The `leadflow` command: dev (everything in one process), serve PART, migrate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import secrets
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from handoff_service.actions import check_rep_for_key
from scoring_service.rules import load_rulebook
from services.api_keys import ROLES, Role, create_api_key, ensure_registered, kept_key, new_key
from services.broker import BrokerError, EmbeddedBroker
from services.bus import ensure_topics
from services.clock import SystemClock
from services.db import create_engine, session_factory
from services.launch.migrate import upgrade
from services.launch.runtime import PART_NAMES, Runtime, tune_garbage_collector
from services.settings import Settings
from sla_monitor.policy import load_policy

log = logging.getLogger("leadflow")

CONFIG_ERRORS = (BrokerError, ValueError, OSError)
BENCH_TARGETS = ("gateway", "scoring")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the CLI owns SIGINT/SIGTERM for all parts."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leadflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run every service in one process, broker included")
    dev.add_argument("--host", help="HTTP host (default 127.0.0.1)")
    dev.add_argument("--port", type=int, help="HTTP port (default 8000)")
    dev.add_argument("--broker-port", type=int, help="embedded broker port (default: a free one)")
    dev.add_argument("--data-dir", type=Path, help="where the SQLite database and key live")

    serve = commands.add_parser("serve", help="run one service against LEADFLOW_KAFKA_BOOTSTRAP")
    serve.add_argument("part", choices=PART_NAMES)
    serve.add_argument("--host", help="HTTP host (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8000)")

    commands.add_parser("migrate", help="apply database migrations to LEADFLOW_DATABASE_URL")

    rules = commands.add_parser("rules", help="work with rulebook files")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_commands.add_parser("check", help="validate a rulebook file offline")
    check.add_argument("file", type=Path)

    sla = commands.add_parser("sla", help="work with SLA files")
    sla_commands = sla.add_subparsers(dest="sla_command", required=True)
    sla_check = sla_commands.add_parser("check", help="validate an SLA file offline")
    sla_check.add_argument("file", type=Path)

    apikey = commands.add_parser("apikey", help="manage API keys for the management API")
    apikey_commands = apikey.add_subparsers(dest="apikey_command", required=True)
    create = apikey_commands.add_parser("create", help="create a key (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument(
        "--rep",
        help="bind a sales key to this rep (their id): it acts only on that rep's leads",
    )

    bench = commands.add_parser("bench", help="measure throughput and latency")
    bench.add_argument("target", choices=BENCH_TARGETS)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the benchmark")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        "http_host": getattr(args, "host", None),
        "http_port": getattr(args, "port", None),
        "broker_port": getattr(args, "broker_port", None),
        "data_dir": getattr(args, "data_dir", None),
    }
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def dev_write_key(settings: Settings) -> list[str]:
    """The configured write keys, or one generated once and kept in the data dir."""
    if settings.write_keys:
        return settings.write_keys
    return [kept_key(settings.data_dir / "write_key", lambda: f"wk_{secrets.token_urlsafe(18)}")]


def _install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _serve(runtime: Runtime, stop: asyncio.Event, banner: str | None) -> None:
    settings = runtime.settings
    server = _Server(
        uvicorn.Config(
            runtime.app,
            host=settings.http_host,
            port=settings.http_port,
            lifespan="off",
            log_level="warning",
        )
    )
    await runtime.start()
    tune_garbage_collector()
    server_task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if server_task.done():
                server_task.result()
                raise OSError(f"HTTP server could not start on port {settings.http_port}")
            await asyncio.sleep(0.05)
        if banner:
            print(banner, flush=True)
        runtime_task = asyncio.create_task(runtime.wait())
        stop_task = asyncio.create_task(stop.wait())
        watched: list[asyncio.Task[Any]] = [runtime_task, stop_task, server_task]
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        runtime_task.cancel()
        stop_task.cancel()
        for task in done:
            if task is not stop_task and not task.cancelled():
                task.result()
    finally:
        print("leadflow: stopping…", file=sys.stderr, flush=True)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await server_task
        await runtime.stop()


def _banner(settings: Settings, broker: EmbeddedBroker | None, admin_key: str) -> str:
    broker_line = (
        f"{broker.bootstrap} (embedded Tansu, in memory)"
        if broker
        else f"{settings.kafka_bootstrap}"
    )
    database = settings.effective_database_url
    if database.startswith("sqlite"):
        database = f"SQLite {settings.sqlite_path.resolve()}"
    return "\n".join(
        [
            "leadflow is running",
            f"  HTTP API    http://{settings.http_host}:{settings.http_port}  (docs: /docs)",
            f"  Kafka       {broker_line}",
            f"  Write key   {', '.join(settings.write_keys)}",
            f"  Admin key   {admin_key}  (management API: Authorization: Bearer <key>)",
            f"  Data        {settings.data_dir.resolve()}",
            f"  Database    {database}",
            f"  Rulebook    {settings.rulebook}",
            f"  Routing     {settings.routing}",
            f"  SLA policy  {settings.sla_policy}",
            "Press Ctrl-C to stop.",
        ]
    )


async def run_dev(settings: Settings) -> None:
    stop = asyncio.Event()
    _install_stop_handlers(stop)
    settings = settings.model_copy(update={"write_keys": dev_write_key(settings)})
    broker: EmbeddedBroker | None = None
    try:
        if not settings.kafka_bootstrap:
            broker = EmbeddedBroker(port=settings.broker_port or 0)
            await broker.start()
            settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        await upgrade(settings.effective_database_url)
        admin_key = await _dev_admin_key(settings)
        await ensure_topics(settings)
        runtime = Runtime(settings, SystemClock(), PART_NAMES)
        await _serve(runtime, stop, _banner(settings, broker, admin_key))
    finally:
        if broker is not None:
            await broker.stop()


async def run_serve(settings: Settings, part: str) -> None:
    if not settings.kafka_bootstrap:
        raise ValueError("LEADFLOW_KAFKA_BOOTSTRAP must be set for `leadflow serve`")
    stop = asyncio.Event()
    _install_stop_handlers(stop)
    if part == "gateway" and not settings.write_keys:
        raise ValueError("LEADFLOW_WRITE_KEYS must name at least one write key for the gateway")
    await ensure_topics(settings)
    runtime = Runtime(settings, SystemClock(), [part])
    banner = (
        f"leadflow {part} on http://{settings.http_host}:{settings.http_port}, "
        f"Kafka {settings.kafka_bootstrap}"
    )
    await _serve(runtime, stop, banner)


def run_rules_check(path: Path) -> int:
    rulebook = load_rulebook(path)
    print(f"{path}: OK, version {rulebook.version}")
    print(
        f"  {len(rulebook.fit)} fit rules, {len(rulebook.disqualifiers)} disqualifiers, "
        f"{len(rulebook.engagement)} engagement rules, {len(rulebook.triggers)} triggers; "
        f"MQL at {rulebook.mql.threshold:g} points"
    )
    return 0


def run_sla_check(path: Path) -> int:
    policy = load_policy(path)
    print(f"{path}: OK")
    for line in policy.summary():
        print(f"  {line}")
    return 0


async def run_apikey_create(
    settings: Settings, name: str, role: Role, rep_id: str | None = None
) -> None:
    """Create a key; `rep_id` binds a sales key to a rep, who must exist (the reps table,
    else the routing file)."""
    if rep_id is not None and role != "sales":
        raise ValueError(f"--rep binds a sales key to a rep; a {role} key acts on any lead")
    engine = create_engine(settings.effective_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            if rep_id is not None:
                await check_rep_for_key(session, settings.routing, rep_id)
            key = await create_api_key(
                session, name=name, role=role, clock=SystemClock(), rep_id=rep_id
            )
    finally:
        await engine.dispose()
    print(key)


async def _dev_admin_key(settings: Settings) -> str:
    engine = create_engine(settings.effective_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            key = kept_key(settings.data_dir / "admin_key", lambda: new_key("admin"))
            await ensure_registered(
                session, key, name="leadflow dev", role="admin", clock=SystemClock()
            )
            return key
    finally:
        await engine.dispose()


async def run_migrate(settings: Settings) -> None:
    revision = await upgrade(settings.effective_database_url)
    print(f"database at revision {revision}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        settings = settings_from(args)
        if args.command == "dev":
            asyncio.run(run_dev(settings))
        elif args.command == "serve":
            asyncio.run(run_serve(settings, args.part))
        elif args.command == "rules":
            return run_rules_check(args.file)
        elif args.command == "sla":
            return run_sla_check(args.file)
        elif args.command == "apikey":
            asyncio.run(run_apikey_create(settings, args.name, args.role, args.rep))
        elif args.command == "bench":
            bench = importlib.import_module(f"services.launch.bench.{args.target}")
            return int(bench.main(settings, args.bench_args))
        else:
            asyncio.run(run_migrate(settings))
    except CONFIG_ERRORS as exc:
        print(f"leadflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
