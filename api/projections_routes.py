"""`GET /api/v1/projections`: each read model's position in the log and how far behind it is;
`POST /api/v1/projections/{name}/rebuild`: rebuild one from position 0 (as `tiercel sys
reindex --projection NAME` does) in the background of this webserver.

One entry per projection: `{name, position, head, lag, status}` (`lag` = events between its
position and the head of the log; `status` UP_TO_DATE or CATCHING_UP), plus `rebuild:
{position, lag}` while a rebuild (from the API or `tiercel sys reindex`) runs, and
`lastRebuild: {startedAt, endedAt, outcome, message, actor}` once one was asked for through
the API. A projection this process runs is reported at the position it has read up to; one run
elsewhere at its checkpoint, which it records at least every second. The viewer role may read
it: it shows positions, not data of any namespace.

A rebuild needs the database owner's rights (it creates and swaps tables) while the server's
connections act as the runtime role: it runs on an owner connection opened for it and closed
after. Only admins may start one; its request and its end are events of the stream
`projection:<name>` with the actor, so the audit trail shows who rebuilt what. One runs at a
time per projection in this process (a second request answers 409); the server stopping
cancels it, which leaves the live tables serving.
"""

from __future__ import annotations

import logging
import time
import uuid

import trio
from quart import Blueprint, Response, current_app

from api import bodies
from api.auth import access, actor
from engine import events as ev
from engine.backoff import Backoff, describe, is_transient
from engine.errors import Conflict, NotFound, TiercelError
from engine.server import ServerContext
from projections import reindex
from projections.runner import Projection

log = logging.getLogger(__name__)

RECORD_TIMEOUT = 10.0
"""Seconds a rebuild's end may take to be recorded: once the server is stopping, or while the
database that cut the rebuild short comes back."""


def blueprint(ctx: ServerContext) -> Blueprint:
    """The projections routes, on `ctx`'s database."""
    routes = Blueprint("projections", __name__)
    running: dict[str, float] = {}
    """Projections this process rebuilds now, with the `time.time()` each started at."""

    @routes.get("/api/v1/projections")
    @access("viewer")
    async def projections() -> Response:
        """Each projection's position, the head of the log, its lag and status."""
        positions = ctx.health.positions()
        rebuilding = set(running)
        answer = await ctx.db.run(lambda conn: reindex.statuses(conn, positions, rebuilding))
        return Response(bodies.json_bytes(answer), content_type="application/json")

    @routes.post("/api/v1/projections/<name>/rebuild")
    @access("admin")
    async def rebuild(name: str) -> Response:
        """Start rebuilding projection `name`; 202 with where to follow it."""
        try:
            projection = reindex.projection_named(name)
        except ValueError as exc:
            raise NotFound(str(exc)) from None
        if name in running:
            raise Conflict(
                f"Projection {name} is being rebuilt already: follow it at GET /api/v1/projections"
            )
        if ctx.owner_url is None:
            raise TiercelError(
                "This server does not know the database owner's login that a rebuild needs; "
                f"run `tiercel sys reindex --projection {name}` as the owner"
            )
        # Taken before any await, so two requests cannot both start one.
        running[name] = time.time()
        who = actor()
        try:
            await ctx.store.append(
                ev.projection_stream(name),
                [ev.ProjectionRebuildRequested(projection=name)],
                meta={"actor": who},
            )
        except BaseException:
            running.pop(name, None)
            raise
        current_app.nursery.start_soon(run, projection, who)  # type: ignore[attr-defined]
        body = {
            "projection": name,
            "status": "RUNNING",
            "follow": "/api/v1/projections",
            "message": f"Rebuilding {name}: its progress is `rebuild` and its end `lastRebuild`"
            f" of {name} at GET /api/v1/projections",
        }
        return Response(
            bodies.json_bytes(body),
            status=202,
            content_type="application/json",
            headers={"Location": "/api/v1/projections"},
        )

    async def run(projection: Projection, who: str) -> None:
        """The rebuild itself, in the app's nursery; its end is recorded whatever it is."""
        name = projection.name
        try:
            assert ctx.owner_url is not None
            done = await reindex.rebuild_as_owner(ctx.owner_url, projection, storage=ctx.storage)
            log.info("Rebuilt projection %s up to position %s", name, done.position)
            await _record(
                name,
                ev.ProjectionRebuilt(
                    projection=name, position=done.position, seconds=round(done.seconds, 3)
                ),
                who,
            )
        except trio.Cancelled:
            message = "The server stopped during the rebuild; the live tables still serve"
            await _record(
                name,
                ev.ProjectionRebuildFailed(projection=name, message=message, cancelled=True),
                who,
            )
            raise
        except Exception as exc:
            log.warning("The rebuild of projection %s failed: %s", name, exc)
            message = f"{exc}; the live tables still serve"
            if is_transient(exc):
                message = (
                    f"The database went away during the rebuild ({describe(exc)}); the live "
                    "tables still serve: start the rebuild again"
                )
            await _record(name, ev.ProjectionRebuildFailed(projection=name, message=message), who)
        finally:
            # Only once its end is recorded: until then the listing says RUNNING.
            running.pop(name, None)

    async def _record(name: str, outcome: ev.Event, who: str) -> None:
        # A rebuild cut short by a database restart ends while the database is still away: its
        # end is tried again until it is back, or the listing would say RUNNING forever. The
        # command id makes a retry whose first try did commit a no-op.
        command_id = f"projection-rebuild-end:{name}:{uuid.uuid4().hex}"
        backoff = Backoff(maximum=2.0)
        with trio.CancelScope(shield=True), trio.move_on_after(RECORD_TIMEOUT) as waited:
            while True:
                try:
                    await ctx.store.append(
                        ev.projection_stream(name),
                        [outcome],
                        command_id=command_id,
                        meta={"actor": who},
                    )
                    return
                except Exception as exc:  # the rebuild's outcome stands; only its record is lost
                    if not is_transient(exc):
                        log.warning("Could not record the end of the rebuild of %s: %s", name, exc)
                        return
                    await trio.sleep(backoff.failed())
        if waited.cancelled_caught:
            log.warning(
                "Could not record the end of the rebuild of %s: the database stayed away", name
            )

    return routes
