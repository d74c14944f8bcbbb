"""`GET /api/v1/projections`: each read model's position in the log and how far behind it is.

One entry per projection: `{name, position, head, lag, status}` (`lag` = events between its
position and the head of the log; `status` UP_TO_DATE or CATCHING_UP), plus `rebuild:
{position, lag}` while `tiercel sys reindex` rebuilds it. A projection this process runs is
reported at the position it has read up to; one run elsewhere at its checkpoint, which it
records at least every second. The viewer role may read it: it shows positions, not data of
any namespace.
"""

from __future__ import annotations

from quart import Blueprint, Response

from api import bodies
from api.auth import access
from engine.server import ServerContext
from projections import reindex


def blueprint(ctx: ServerContext) -> Blueprint:
    """The projections route, on `ctx`'s database."""
    routes = Blueprint("projections", __name__)

    @routes.get("/api/v1/projections")
    @access("viewer")
    async def projections() -> Response:
        """Each projection's position, the head of the log, its lag and status."""
        positions = ctx.health.positions()
        answer = await ctx.db.run(lambda conn: reindex.statuses(conn, positions))
        return Response(bodies.json_bytes(answer), content_type="application/json")

    return routes
