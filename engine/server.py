"""Runs Tiercel's components in one process, by role, against one database.

The engine's own components (executor, timers, watchdog, worker) are started here. Components
that live in outer packages (the web server, the projections) register themselves in the
`tiercel.services` entry-point group, so the engine starts them without importing them.
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

from engine.db import Database, Notifier
from engine.executor_shell import ExecutorShell
from engine.migrate import migrate
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
    heartbeat_interval: float = 3.0
    heartbeat_timeout: float = 30.0
    ready: trio.Event = field(default_factory=trio.Event)
    """Set once every component of this process is running."""
    extra: dict[str, Any] = field(default_factory=dict)
    storage: Storage | None = None
    """Internal storage (default: `<data_dir>/storage`, or the user's data dir)."""


Service = Callable[..., Awaitable[None]]


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


async def run_server(
    url: str,
    roles: tuple[str, ...] = ALL_ROLES,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Migrate the database, then run the components of `roles` until cancelled."""
    await trio.to_thread.run_sync(migrate, url)
    db = Database(url, max_size=8)
    store = EventStore(db)
    notifier = Notifier(url, CHANNEL)
    ctx = ServerContext(url=url, db=db, store=store, notifier=notifier, **options)
    if ctx.storage is None:
        ctx.storage = LocalStorage(storage_root(ctx.data_dir))
    registered = services(roles)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier.run)
            if "executor" in roles:
                await nursery.start(ExecutorShell(store, notifier).run)
                await nursery.start(TimerService(store, notifier).run)
                await nursery.start(Watchdog(store, notifier, timeout=ctx.heartbeat_timeout).run)
            if "worker" in roles:
                worker = Worker(
                    store,
                    notifier,
                    slots=ctx.worker_slots,
                    heartbeat_interval=ctx.heartbeat_interval,
                    work_dir=(ctx.data_dir / "work") if ctx.data_dir else None,
                    storage=ctx.storage,
                )
                await nursery.start(worker.run)
            for role in roles:
                if role in registered:
                    await nursery.start(registered[role], ctx)
            ctx.ready.set()
            task_status.started(ctx)
    finally:
        await db.close()
