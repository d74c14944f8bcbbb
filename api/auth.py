"""Who may call the API: authentication, roles per namespace, and cross-site request refusal.

Every route declares the least role it needs with `@access(role)` (or `@public` for health, the
OpenAPI document and webhooks); a route that declares nothing is refused, so a new route can
never be open by mistake. Before a request reaches its route:

1. A state-changing request must come from the server's own origin (or a tool that sends no
   `Origin`/`Sec-Fetch-Site`, like curl), and its body must be JSON, YAML or multipart: the
   bodies a page on another site can send without the browser asking first (text/plain, forms)
   are refused, and so is a page's request to a server bound without authentication under a
   host name that is not local (DNS rebinding).
2. Credentials are checked: HTTP basic auth (users), `Authorization: Bearer` (API tokens), or
   the session cookie `POST /api/v1/login` sets for the web UI (HttpOnly, SameSite=Strict,
   signed with a key the web servers share); a state-changing request made with the cookie
   must also send the session's CSRF token in `X-CSRF-Token`.
3. The principal's role must reach the route's role, and its namespaces the namespace the route
   acts on (from the path, or the execution named in the path); routes that list objects filter
   them to the principal's namespaces, and routes that take a namespace from the body check it.

Logins and refused credentials are recorded as events, at most one per principal, method and
source address a while (a client sending basic auth on every request is one login, not
thousands), refusals counted in between.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import trio
from quart import g, request
from quart_trio import QuartTrio

from engine import accounts
from engine import events as ev
from engine.accounts import Accounts, Principal
from engine.errors import Forbidden, Unauthorized, UnsupportedMediaType
from engine.server import ServerContext

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

PUBLIC = "public"
ROLE_ATTR = "tiercel_access"

REFRESH_EVERY = 1.0
"""Seconds an account read may be reused: a revoked token stops working within this time."""
PASSWORD_CACHE_SECONDS = 900.0
LOGIN_RECORD_EVERY = 3600.0
REFUSAL_RECORD_EVERY = 60.0

BODY_TYPES = (
    "application/json",
    "application/x-yaml",
    "application/yaml",
    "text/yaml",
    "text/x-yaml",
    "multipart/form-data",
)
"""What a state-changing request may send. A page on another site can send text/plain and
urlencoded forms without the browser asking the server first; these it cannot."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_COOKIE = "tiercel_session"
SESSION_SECONDS = 8 * 3600
CSRF_HEADER = "X-CSRF-Token"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def access(role: str) -> Callable[[F], F]:
    """Declare the least role a route needs (viewer, runner, editor or admin)."""
    accounts.check_role(role)

    def mark(fn: F) -> F:
        setattr(fn, ROLE_ATTR, role)
        return fn

    return mark


def public(fn: F) -> F:
    """Declare a route that answers without credentials (health, OpenAPI, webhooks)."""
    setattr(fn, ROLE_ATTR, PUBLIC)
    return fn


def principal() -> Principal:
    """Who makes the current request."""
    found: Principal = g.principal
    return found


def actor() -> str:
    """The current principal as events' metadata names it (`anonymous` when the server runs
    without authentication)."""
    who = principal()
    return "anonymous" if who.kind == "anonymous" else who.actor


def require_namespace(namespace: str, role: str | None = None) -> None:
    """Refuse the request unless the principal reaches `namespace` (with `role` when given)."""
    who = principal()
    if role is not None and not who.has_role(role):
        raise Forbidden(f"{who.actor} has the role {who.role}; this needs {role} or above")
    if not who.reaches(namespace):
        raise Forbidden(
            f"{who.actor} may not reach namespace {namespace!r} "
            f"(allowed: {', '.join(who.namespaces)})"
        )


def namespace_filter(column: str = "namespace") -> tuple[str, list[Any]]:
    """A SQL condition (and its parameters) keeping rows in the principal's namespaces."""
    scopes = principal().namespaces
    if not scopes:
        return "true", []
    parts, params = [], []
    for scope in scopes:
        parts.append(f"({column} = %s OR {column} LIKE %s)")
        params += [scope, _like_prefix(scope) + ".%"]
    return "(" + " OR ".join(parts) + ")", params


def _like_prefix(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Guard:
    """The request checks of one API application (see the module's description)."""

    def __init__(self, app: QuartTrio, ctx: ServerContext) -> None:
        self.app = app
        self.ctx = ctx
        self.enabled = ctx.auth_enabled
        self.accounts = Accounts()
        self._refreshed = -REFRESH_EVERY
        self._refresh_lock = trio.Lock()
        self._hashing = trio.CapacityLimiter(2)
        self._verified: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self._namespaces: OrderedDict[str, str] = OrderedDict()
        self._recorded: dict[tuple[str, str, str, str], tuple[float, int]] = {}
        self.anonymous = Principal("anonymous", "local", accounts.ADMIN)
        self.allowed_origins = {o.rstrip("/").lower() for o in ctx.allowed_origins}
        self._session_key: bytes | None = None

    # --- the hook ------------------------------------------------------------------------------

    async def check(self) -> None:
        """Run before every request: refuse it (by raising) or record who makes it."""
        view = self.app.view_functions.get(request.endpoint or "")
        role = getattr(view, ROLE_ATTR, None) if view is not None else None
        if role == PUBLIC:
            return
        if request.method not in SAFE_METHODS:
            self.check_same_origin()
        who = await self._authenticate()
        g.principal = who
        if view is None:
            return  # no such route: the 404/405 handler answers, to a known caller only
        if role is None:
            log.error("Route %s declares no access role; refusing it", request.endpoint)
            raise Forbidden(f"{request.method} {request.path} is not open to any role")
        if not who.has_role(role):
            raise Forbidden(
                f"{who.actor} has the role {who.role}; "
                f"{request.method} {request.path} needs {role} or above"
            )
        args = request.view_args or {}
        if "namespace" in args:
            require_namespace(str(args["namespace"]))
        elif "execution_id" in args and who.namespaces:
            namespace = await self._execution_namespace(str(args["execution_id"]))
            if namespace is not None:
                require_namespace(namespace)

    # --- cross-site requests ---------------------------------------------------------------------

    def check_same_origin(self) -> None:
        """Refuse a state-changing request a page on another site could have sent."""
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        own = self._own_origin()
        if origin is not None and origin.rstrip("/").lower() not in {own, *self.allowed_origins}:
            raise Forbidden(
                f"Cross-site request refused: Origin {origin[:200]!r} is not this server "
                f"({own}); list trusted origins with TIERCEL_ALLOWED_ORIGINS"
            )
        if origin is None and site not in (None, "same-origin", "none"):
            raise Forbidden(f"Cross-site request refused (Sec-Fetch-Site: {site[:40]})")
        if not self.enabled and (origin is not None or site is not None):
            host = urllib.parse.urlsplit("//" + (request.headers.get("Host") or "")).hostname
            if (host or "").lower() not in LOCAL_HOSTS:
                raise Forbidden(
                    "Refused: without authentication this server answers browsers only "
                    "under a local host name (localhost or 127.0.0.1)"
                )
        body = int(request.content_length or 0) > 0 or "Transfer-Encoding" in request.headers
        mimetype = (request.mimetype or "").lower()
        if (body or mimetype) and mimetype not in BODY_TYPES:
            raise UnsupportedMediaType(
                f"Content-Type {mimetype or 'none'!r} is not accepted on {request.method} "
                f"{request.path}: send {', '.join(BODY_TYPES)}"
            )

    def _own_origin(self) -> str:
        host = (request.headers.get("Host") or "").lower()
        return f"{request.scheme}://{host}"

    # --- credentials -----------------------------------------------------------------------------

    async def _authenticate(self) -> Principal:
        if not self.enabled:
            return self.anonymous
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if not header and request.cookies.get(SESSION_COOKIE):
            return await self._session(request.cookies[SESSION_COOKIE])
        if not header:
            raise self._challenge("Authentication required: send basic auth or a bearer token")
        await self._refresh()
        now = dt.datetime.now(dt.UTC)
        if scheme == "bearer":
            found = self.accounts.token_principal(value, now)
            if found == "unknown token" and await self._refresh(soon=True):
                found = self.accounts.token_principal(value, now)  # issued a moment ago
            if isinstance(found, str):
                name = f"token:{value.strip()[4:16]}" if value.strip() else "token:?"
                self._record(name, "bearer", refused=found)
                raise self._challenge(f"Bearer token refused: {found}")
            self._record(found.actor, "bearer")
            return found
        if scheme == "basic":
            username, password = _basic(value)
            user = self.accounts.users.get(username)
            if user is None and await self._refresh(soon=True):
                user = self.accounts.users.get(username)  # created a moment ago
            if user is None or user.revoked or not await self._password_ok(user, password):
                reason = "revoked" if user is not None and user.revoked else "bad credentials"
                self._record(f"user:{username[:100]}", "basic", refused=reason)
                raise self._challenge("Invalid username or password")
            who = self.accounts.user_principal(user)
            self._record(who.actor, "basic")
            return who
        raise self._challenge(f"Unsupported Authorization scheme {scheme[:20]!r}")

    async def login(self, username: str, password: str) -> tuple[Principal, str, str]:
        """Check a password and open a session: `(principal, cookie value, CSRF token)`."""
        await self._refresh()
        user = self.accounts.users.get(username)
        if user is None or user.revoked or not await self._password_ok(user, password):
            self._record(f"user:{username[:100]}", "session", refused="bad credentials", every=0)
            raise Unauthorized("Invalid username or password")
        who = self.accounts.user_principal(user)
        self._record(who.actor, "session", every=0)
        csrf = secrets.token_urlsafe(24)
        expires = int(time.time()) + SESSION_SECONDS
        payload = base64.urlsafe_b64encode(
            orjson.dumps([user.username, user.version, expires, csrf])
        ).decode()
        return who, f"{payload}.{await self._sign(payload)}", csrf

    async def _session(self, cookie: str) -> Principal:
        payload, _, signature = cookie.partition(".")
        if not payload or not hmac.compare_digest(signature, await self._sign(payload)):
            raise Unauthorized("The session is not valid: log in again")
        try:
            username, version, expires, csrf = orjson.loads(base64.urlsafe_b64decode(payload))
        except (ValueError, TypeError, binascii.Error):
            raise Unauthorized("The session is not valid: log in again") from None
        if expires < time.time():
            raise Unauthorized("The session expired: log in again")
        await self._refresh()
        user = self.accounts.users.get(username)
        if user is None or user.revoked or user.version != version:
            # A password change, a new role or a revocation ends every session of the account.
            raise Unauthorized("The session ended (the account changed): log in again")
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent, csrf):
                raise Forbidden(f"Missing or wrong {CSRF_HEADER} header for this session")
        return self.accounts.user_principal(user)

    async def _sign(self, payload: str) -> str:
        if self._session_key is None:
            self._session_key = await self._load_key("session")
        digest = hmac.new(self._session_key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    async def _load_key(self, name: str) -> bytes:
        def load(conn: Any) -> bytes:
            conn.execute(
                "INSERT INTO auth_keys (name, key) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (name, secrets.token_bytes(32)),
            )
            row = conn.execute("SELECT key FROM auth_keys WHERE name = %s", (name,)).fetchone()
            return bytes(row[0])

        return await self.ctx.db.run(load)

    def _challenge(self, message: str) -> Unauthorized:
        exc = Unauthorized(message)
        exc.headers = {"WWW-Authenticate": 'Basic realm="Tiercel", charset="UTF-8"'}
        return exc

    async def _refresh(self, soon: bool = False) -> bool:
        """Read account changes if the last read is older than REFRESH_EVERY (or, with `soon`,
        than a tenth of it: an unknown name or token may have been created a moment ago).
        Whether it read."""
        every = REFRESH_EVERY / 10 if soon else REFRESH_EVERY
        if trio.current_time() - self._refreshed < every:
            return False
        async with self._refresh_lock:
            if trio.current_time() - self._refreshed < every:
                return False
            self.accounts = await accounts.load(self.ctx.db, self.accounts)
            self._refreshed = trio.current_time()
            return True

    async def _password_ok(self, user: accounts.User, password: str) -> bool:
        key = (user.username, hashlib.sha256(password.encode()).hexdigest())
        cached = self._verified.get(key)
        if cached is not None and cached[0] == user.version and cached[1] > time.monotonic():
            return True
        async with self._hashing:
            ok = await trio.to_thread.run_sync(
                accounts.verify_password, user.password_hash, password
            )
        if ok:
            self._verified[key] = (user.version, time.monotonic() + PASSWORD_CACHE_SECONDS)
            while len(self._verified) > 10_000:
                self._verified.popitem(last=False)
        return ok

    # --- the audit of logins ---------------------------------------------------------------------

    def _record(
        self, who: str, method: str, refused: str | None = None, every: float | None = None
    ) -> None:
        source = request.remote_addr or ""
        key = (who, method, source, "refused" if refused else "ok")
        now = time.monotonic()
        if every is None:
            every = REFUSAL_RECORD_EVERY if refused else LOGIN_RECORD_EVERY
        last, count = self._recorded.get(key, (-every, 0))
        if now - last < every:
            self._recorded[key] = (last, count + 1)
            return
        self._recorded[key] = (now, 0)
        if len(self._recorded) > 10_000:
            self._recorded.clear()
        event: ev.Event
        if refused:
            event = ev.LoginRefused(
                principal=who, method=method, reason=refused, source=source, count=count + 1
            )
        else:
            event = ev.LoginSucceeded(principal=who, method=method, source=source)
        stream = ev.login_stream(who.split(":", 1)[-1][:120])

        async def write() -> None:
            try:
                await self.ctx.store.append(stream, [event], meta={"actor": who})
            except Exception as exc:  # the audit of a login must not fail the request
                log.warning("Could not record %s of %s: %s", type(event).__name__, who, exc)

        self.app.nursery.start_soon(write)

    # --- namespaces of executions ----------------------------------------------------------------

    async def _execution_namespace(self, execution_id: str) -> str | None:
        if execution_id in self._namespaces:
            return self._namespaces[execution_id]
        row = await self.ctx.db.fetchone(
            "SELECT data->>'namespace' AS namespace FROM events WHERE stream_id = %s"
            " ORDER BY version LIMIT 1",
            (ev.execution_stream(execution_id),),
        )
        if row is None or row["namespace"] is None:
            return None
        namespace = str(row["namespace"])
        self._namespaces[execution_id] = namespace
        while len(self._namespaces) > 50_000:
            self._namespaces.popitem(last=False)
        return namespace


def _basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return "", ""
    username, _, password = decoded.partition(":")
    return username, password


def install(app: QuartTrio, ctx: ServerContext) -> Guard:
    """Check every request of `app` (see the module's description)."""
    guard = Guard(app, ctx)
    app.before_request(guard.check)
    return guard
