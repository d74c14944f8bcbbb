"""The `webserver` role: serves the API with hypercorn's trio worker."""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from api.app import create_app
from engine.server import ServerContext

log = logging.getLogger(__name__)


async def serve(ctx: ServerContext, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API on `ctx.host:ctx.port` until cancelled; the bound URLs go to `ctx.extra`."""
    config = Config()
    config.bind = [f"{ctx.host}:{ctx.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    app = create_app(ctx)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn_serve, app, config)
        ctx.extra["urls"] = binds
        log.info("API listening on %s", ", ".join(binds))
        task_status.started(binds)
