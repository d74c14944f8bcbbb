"""The `webserver` role: serves the API with hypercorn's trio worker."""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from api.app import create_app
from engine import accounts
from engine.server import ServerContext

log = logging.getLogger(__name__)


async def serve(ctx: ServerContext, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API on `ctx.host:ctx.port` until cancelled; the bound URLs go to `ctx.extra`."""
    if ctx.auth_enabled:
        await _first_account(ctx)
    else:
        log.warning(
            "Authentication is OFF (--no-auth): anyone who can reach %s:%s can run code here. "
            "Use it for local development only.",
            ctx.host,
            ctx.port,
        )
    config = Config()
    config.bind = [f"{ctx.host}:{ctx.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    app = create_app(ctx)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn_serve, app, config)
        ctx.extra["urls"] = binds
        log.debug("API listening on %s", ", ".join(binds))
        task_status.started(binds)


async def _first_account(ctx: ServerContext) -> None:
    """Create the first (admin) account when the database has none, and say how to log in."""
    password = await accounts.ensure_admin(ctx.store, ctx.admin_username, ctx.admin_password)
    if password is None:
        return
    if ctx.admin_password is not None:
        log.warning(
            "Created the first account %r (role admin) with the configured password",
            ctx.admin_username,
        )
        return
    # Shown once: it is not stored anywhere but as a hash.
    log.warning(
        "\n\n  Created the first account. Log in as  %s  with the password  %s\n"
        "  e.g.  curl -u %s:%s http://localhost:%s/api/v1/flows/search\n"
        "  This password is shown only now: change it with "
        "`tiercel users update %s --password`.\n",
        ctx.admin_username,
        password,
        ctx.admin_username,
        password,
        ctx.port,
        ctx.admin_username,
    )
