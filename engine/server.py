"""Runs Tiercel's components in one process, by role, against one database.

The engine's own components (executor, timers, watchdog, scheduler, worker) are started here.
Components that live in outer packages (the web server, the projections) register themselves in
the `tiercel.services` entry-point group, so the engine starts them without importing them.

A process outlives its database: startup waits for PostgreSQL (logging what it waits for),
each component backs off and resumes on its own when the database goes away, and as a last
line a component that still ends on a transient database error is started again. What each
component reports goes to `ServerContext.health`, which readiness reads.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from engine.backoff import Backoff, describe, is_transient, retry
from engine.bulk import BulkRunner
from engine.config import template_variables
from engine.db import Database, Notifier, runtime_url
from engine.executor_shell import ExecutorShell
from engine.feed import Feed
from engine.handoff import Handoff
from engine.health import Health
from engine.migrate import migrate
from engine.scheduler import Scheduler
from engine.storage import LocalStorage, Storage
from engine.store import CHANNEL, EventStore
from engine.timers import TimerService
from engine.watchdog import Watchdog
from engine.worker import Worker

log = logging.getLogger(__name__)

ALL_ROLES = ("executor", "worker", "indexer", "webserver")


@dataclass
class ServerContext:
    """What every component of a server process shares."""

    url: str
    db: Database
    store: EventStore
    notifier: Notifier
    host: str = "0.0.0.0"
    port: int = 8080
    data_dir: Path | None = None
    worker_slots: int = 16
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 15.0
    ready: trio.Event = field(default_factory=trio.Event)
    """Set once every component of this process is running."""
    extra: dict[str, Any] = field(default_factory=dict)
    storage: Storage | None = None
    """Internal storage (default: `<data_dir>/storage`, or the user's data dir)."""
    health: Health = field(default_factory=Health)
    """What each component says about itself; readiness is DOWN while any is DOWN."""
    auth_enabled: bool = True
    """Whether the API asks for credentials (off only with `--no-auth`, on 127.0.0.1)."""
    admin_username: str = "admin"
    admin_password: str | None = None
    """The first account's password when the database has none (generated when not given)."""
    allowed_origins: tuple[str, ...] = ()
    """Origins besides the server's own from which browsers may send state-changing requests."""
    template_variables: dict[str, Any] = field(default_factory=dict)
    """The `globals` and `envs` roots workers add to what tasks render (engine/config.py)."""
    work_dir: Path | None = None
    """Where workers make the working directories of attempts (default `<data_dir>/work`)."""
    worker: Worker | None = None
    """The worker of this process, when it runs one (its slots are shown in the metrics)."""
    owner_url: str | None = None
    """The database owner's URL (migrations run as it); only for what needs the owner's rights,
    such as a projection rebuild started from the API, on a connection opened for it."""


Service = Callable[..., Awaitable[None]]

RESTART_RESET_AFTER = 60.0
"""A component that ran this many seconds before failing is restarted without a long pause."""


def storage_root(data_dir: Path | None) -> Path:
    """Where internal storage lives: `TIERCEL_STORAGE_DIR`, else `<data dir>/storage`."""
    configured = os.environ.get("TIERCEL_STORAGE_DIR")
    if configured:
        return Path(configured)
    if data_dir is None:
        from engine.embedded import default_data_dir

        data_dir = default_data_dir()
    return data_dir / "storage"


def services(roles: tuple[str, ...]) -> dict[str, Service]:
    """Components registered by other packages for `roles`, by role name."""
    found: dict[str, Service] = {}
    for entry in importlib.metadata.entry_points(group="tiercel.services"):
        if entry.name in roles:
            found[entry.name] = entry.load()
    return found


async def supervise(
    name: str,
    health: Health,
    service: Service,
    *args: Any,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `service(*args)`, starting it again after it ended on a transient database error.

    Components handle database outages themselves; this is the last line that keeps a process
    alive when one still lets such an error out. While it waits to restart, `name` is DOWN in
    `health`.
    Any other error ends the process as before: it is a bug to fix, not an outage to wait out.
    """
    backoff = Backoff()
    started = False
    while True:
        began = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                value = await nursery.start(service, *args)
                health.up(name)
                if not started:
                    task_status.started(value)
                    started = True
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            if trio.current_time() - began > RESTART_RESET_AFTER:
                backoff.reset()
            delay = backoff.failed()
            reason = describe(exc)
            health.down(name, reason)
            log.warning("%s stopped (%s); starting it again in %.1fs", name, reason, delay)
            await trio.sleep(delay)


async def run_server(
    url: str,
    roles: tuple[str, ...] = ALL_ROLES,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    prepare: Callable[[ServerContext], Awaitable[None]] | None = None,
    **options: Any,
) -> None:
    """Migrate the database, then run the components of `roles` until cancelled.

    Startup waits for the database with backoff instead of failing, and no component ends the
    process on a transient database error. `prepare(ctx)`, when given, runs once every
    component has started and before the process is ready (`--flows` deploys its folder
    there), so readiness answers UP only after it.
    """
    health = Health()
    await retry(
        lambda: trio.to_thread.run_sync(migrate, url),
        what="waiting for PostgreSQL to apply migrations",
        health=health,
        component="migrations",
    )
    # Migrations ran as the owner; everything else runs as the runtime role (docs/audit-log.md).
    owner_url = url
    url = await retry(
        lambda: trio.to_thread.run_sync(runtime_url, url),
        what="connecting as the runtime role",
        health=health,
        component="migrations",
    )
    db = Database(url, max_size=8)
    storage = options.pop("storage", None) or LocalStorage(storage_root(options.get("data_dir")))
    store = EventStore(db, storage)
    notifier = Notifier(url, CHANNEL, health=health)
    if not options.get("template_variables"):
        options["template_variables"] = template_variables({}, os.environ)
    ctx = ServerContext(
        url=url,
        owner_url=owner_url,
        db=db,
        store=store,
        notifier=notifier,
        health=health,
        storage=storage,
        **options,
    )
    registered = services(roles)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier.run)
            # One reader of the log for every consumer of this process; its own commits wake
            # them at once.
            feed = Feed(store, notifier, health=health)
            await nursery.start(feed.run)
            store.feed = feed
            store.committed = notifier.committed
            # An executor and a worker in one process: the worker takes the definitions of the
            # attempts the executor schedules instead of rebuilding them from the history.
            handoff = Handoff() if "executor" in roles and "worker" in roles else None
            if "executor" in roles:
                shell = ExecutorShell(store, notifier, handoff=handoff)
                await nursery.start(supervise, "service:executor", health, shell.run)
                await nursery.start(
                    supervise, "service:timers", health, TimerService(store, notifier).run
                )
                watchdog = Watchdog(store, notifier, timeout=ctx.heartbeat_timeout)
                await nursery.start(supervise, "service:watchdog", health, watchdog.run)
                # Bulk operations on executions (engine/bulk.py) run beside the executor.
                bulk = BulkRunner(store, storage=storage)
                await nursery.start(supervise, "service:bulk", health, bulk.run)
            if "scheduler" in roles:
                scheduler = Scheduler(store, notifier, health=health)
                await nursery.start(supervise, "service:scheduler", health, scheduler.run)
            if "worker" in roles:
                worker = Worker(
                    store,
                    notifier,
                    slots=ctx.worker_slots,
                    heartbeat_interval=ctx.heartbeat_interval,
                    heartbeat_timeout=ctx.heartbeat_timeout,
                    work_dir=ctx.work_dir or ((ctx.data_dir / "work") if ctx.data_dir else None),
                    storage=ctx.storage,
                    handoff=handoff,
                    variables=ctx.template_variables,
                )
                ctx.worker = worker
                await nursery.start(supervise, "service:worker", health, worker.run)
            for role in roles:
                if role in registered:
                    await nursery.start(supervise, f"service:{role}", health, registered[role], ctx)
            if prepare is not None:
                await prepare(ctx)
            ctx.ready.set()
            task_status.started(ctx)
    finally:
        await db.close()
