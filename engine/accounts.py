"""Accounts and API tokens, event-sourced like everything else.

A user has a password (kept only as an argon2 hash), a role and the namespaces it may reach; an
API token has a role, namespaces, an expiry and an owner, and only a SHA-256 hash of its secret
is kept (a token is 32 random bytes, so a fast hash is as strong as a slow one). Every change is
an event in the `user:<name>` or `token:<id>` stream, with the actor that made it in the event's
metadata, so the audit trail names who created, changed or revoked what.

Roles are ordered: a viewer reads, a runner also starts, kills and resumes executions, an editor
also deploys flows and writes namespace data, an admin also manages accounts and the system.
A principal's namespaces bound all of it: `team` covers `team` and every `team.*` below it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from engine import events as ev
from engine.db import Database
from engine.duration import parse_duration
from engine.errors import Conflict, InvalidRequest, NotFound, WrongExpectedVersion
from engine.store import NO_STREAM, EventStore

ROLES = ("viewer", "runner", "editor", "admin")
"""From least to most allowed; each role may do everything the ones before it may."""

ADMIN = "admin"
TOKEN_PREFIX = "tct_"
MIN_PASSWORD = 8
DEFAULT_TOKEN_DAYS = 90

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,149}$")
_TOKEN = re.compile(r"^tct_([a-z0-9]{12})_([A-Za-z0-9_-]{20,100})$")
_hasher = PasswordHasher()


class Principal(msgspec.Struct, frozen=True):
    """Who is making a request: a user, a token, or the local developer when auth is off."""

    kind: str
    """`user`, `token`, `cli` or `anonymous` (a server started with --no-auth)."""
    name: str
    role: str
    namespaces: tuple[str, ...] = ()
    """The namespaces it may reach (and their children); every namespace when empty."""

    @property
    def actor(self) -> str:
        """How events' metadata names this principal: `user:alice`, `token:ci (abc123)`."""
        return f"{self.kind}:{self.name}"

    def has_role(self, role: str) -> bool:
        """Whether this principal's role is `role` or above."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def reaches(self, namespace: str) -> bool:
        """Whether `namespace` is inside this principal's namespaces."""
        return namespace_in(namespace, self.namespaces)

    def can(self, role: str, namespace: str | None = None) -> bool:
        """Whether this principal may act as `role` (in `namespace`, when one is given)."""
        return self.has_role(role) and (namespace is None or self.reaches(namespace))


def namespace_in(namespace: str, scopes: tuple[str, ...] | list[str]) -> bool:
    """Whether `namespace` is one of `scopes` or below one of them (empty scopes: every one)."""
    if not scopes:
        return True
    return any(namespace == s or namespace.startswith(s + ".") for s in scopes)


@dataclass
class User:
    """An account as its events left it."""

    username: str
    password_hash: str
    role: str
    namespaces: tuple[str, ...]
    revoked: bool = False
    version: int = 0
    """The stream's version: a cached password check is valid only for the version it saw."""


@dataclass
class Token:
    """An API token as its events left it."""

    token_id: str
    name: str
    secret_hash: str
    role: str
    namespaces: tuple[str, ...]
    owner: str | None
    expires_at: dt.datetime | None
    created_at: dt.datetime
    revoked: bool = False


@dataclass
class Accounts:
    """Every account and token, folded from their streams up to `position`."""

    users: dict[str, User] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    position: int = 0

    def apply(self, event: ev.AnyEvent, version: int, at: dt.datetime) -> None:
        """Fold one account or token event in."""
        if isinstance(event, ev.UserCreated):
            self.users[event.username] = User(
                event.username,
                event.passwordHash,
                event.role,
                tuple(event.namespaces),
                version=version,
            )
        elif isinstance(event, ev.UserUpdated) and event.username in self.users:
            user = self.users[event.username]
            if event.passwordHash is not None:
                user.password_hash = event.passwordHash
            if event.role is not None:
                user.role = event.role
            if event.namespaces is not None:
                user.namespaces = tuple(event.namespaces)
            user.revoked = False
            user.version = version
        elif isinstance(event, ev.UserRevoked) and event.username in self.users:
            self.users[event.username].revoked = True
            self.users[event.username].version = version
        elif isinstance(event, ev.TokenCreated):
            self.tokens[event.tokenId] = Token(
                event.tokenId,
                event.name,
                event.secretHash,
                event.role,
                tuple(event.namespaces),
                event.owner,
                _parse_time(event.expiresAt),
                at,
            )
        elif isinstance(event, ev.TokenRevoked) and event.tokenId in self.tokens:
            self.tokens[event.tokenId].revoked = True

    def user_principal(self, user: User) -> Principal:
        """The principal a user's requests run as."""
        return Principal("user", user.username, user.role, user.namespaces)

    def token_principal(self, raw: str, now: dt.datetime) -> Principal | str:
        """The principal `raw` (a bearer token) authenticates, or why it does not."""
        parsed = parse_token(raw)
        if parsed is None:
            return "not a Tiercel API token"
        token_id, secret = parsed
        token = self.tokens.get(token_id)
        if token is None or not hmac.compare_digest(token.secret_hash, _secret_hash(secret)):
            return "unknown token"
        if token.revoked:
            return "token revoked"
        if token.expires_at is not None and token.expires_at <= now:
            return "token expired"
        role, namespaces = token.role, token.namespaces
        if token.owner is not None:
            owner = self.users.get(token.owner)
            if owner is None or owner.revoked:
                return "the token's owner is revoked"
            # A token never does more than the user it acts for.
            if ROLES.index(owner.role) < ROLES.index(role):
                role = owner.role
            if owner.namespaces:
                namespaces = tuple(n for n in namespaces if namespace_in(n, owner.namespaces))
                if not namespaces:
                    namespaces = owner.namespaces
        return Principal("token", f"{token.name} ({token.token_id})", role, namespaces)


def _parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(raw: str) -> tuple[str, str] | None:
    """`(token id, secret)` of a token string, or None when it is not one."""
    match = _TOKEN.match(raw.strip())
    return (match.group(1), match.group(2)) if match else None


def hash_password(password: str) -> str:
    """An argon2 hash of `password` (slow on purpose: call it off the event loop)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches `password_hash` (slow on purpose: off the event loop)."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# --- checks ------------------------------------------------------------------------------------


def check_role(role: str) -> str:
    """`role` when it is one of ROLES, else a clear error."""
    if role not in ROLES:
        raise InvalidRequest(f"Unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role


def check_username(username: str) -> str:
    """`username` when it is a valid account name, else a clear error."""
    if not _USERNAME.match(username):
        raise InvalidRequest(
            f"Invalid username {username[:120]!r}: use 1 to 100 letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    return username


def check_password(password: str) -> str:
    """`password` when it is long enough, else a clear error."""
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"The password is too short: use at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise InvalidRequest("The password is too long: use at most 1024 characters")
    return password


def check_namespaces(namespaces: list[str] | tuple[str, ...]) -> list[str]:
    """`namespaces` when each is a valid namespace, else a clear error."""
    for ns in namespaces:
        if not _NAMESPACE.match(ns):
            raise InvalidRequest(
                f"Invalid namespace {ns[:160]!r}: lowercase letters, digits, '.', '_' and '-', "
                "at most 150 characters"
            )
    return list(namespaces)


def token_expiry(value: Any, now: dt.datetime) -> dt.datetime | None:
    """When a token given `value` expires: an ISO-8601 duration or date, `never`, or 90 days."""
    if value is None:
        return now + dt.timedelta(days=DEFAULT_TOKEN_DAYS)
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'expires' must be an ISO-8601 duration (P30D), a date or 'never'")
    if value.lower() == "never":
        return None
    if value.upper().startswith("P"):
        try:
            return now + parse_duration(value)
        except (ValueError, TypeError, OverflowError):
            raise InvalidRequest(f"'expires' {value[:40]!r} is not an ISO-8601 duration") from None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"'expires' {value[:40]!r} is not an ISO-8601 duration (P30D), a date or 'never'"
        ) from None
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    if when <= now:
        raise InvalidRequest("'expires' is in the past")
    return when


# --- reading -----------------------------------------------------------------------------------


def refresh_sync(conn: psycopg.Connection[Any], accounts: Accounts) -> Accounts:
    """Fold the account and token events recorded after `accounts.position` into it."""
    rows = conn.execute(
        "SELECT seq, version, data, recorded_at FROM events"
        " WHERE seq > %s AND ((stream_id >= 'user:' AND stream_id < 'user;')"
        " OR (stream_id >= 'token:' AND stream_id < 'token;')) ORDER BY seq",
        (accounts.position,),
    ).fetchall()
    for seq, version, data, recorded_at in rows:
        accounts.apply(ev.decode(msgspec.json.encode(data)), version, recorded_at)
        accounts.position = seq
    return accounts


async def load(db: Database, accounts: Accounts | None = None) -> Accounts:
    """Every account and token (bringing `accounts` up to date when given)."""
    current = accounts if accounts is not None else Accounts()
    return await db.run(lambda conn: refresh_sync(conn, current))


# --- commands ----------------------------------------------------------------------------------


async def create_user(
    store: EventStore,
    username: str,
    password: str,
    role: str,
    namespaces: list[str] | tuple[str, ...] = (),
    *,
    actor: str,
) -> None:
    """Create an account; `Conflict` when the name is taken."""
    check_username(username)
    check_password(password)
    check_role(role)
    scopes = check_namespaces(namespaces)
    password_hash = await trio.to_thread.run_sync(hash_password, password)
    if await store.read_stream(ev.user_stream(username)):
        raise Conflict(f"User {username!r} exists already: use `tiercel users update` to change it")
    try:
        await store.append(
            ev.user_stream(username),
            [ev.UserCreated(username=username, passwordHash=password_hash, role=role,
                            namespaces=scopes)],
            expected_version=NO_STREAM,
            meta={"actor": actor},
        )  # fmt: skip
    except WrongExpectedVersion:
        raise Conflict(f"User {username!r} exists already") from None


async def update_user(
    store: EventStore,
    username: str,
    *,
    password: str | None = None,
    role: str | None = None,
    namespaces: list[str] | None = None,
    actor: str,
) -> None:
    """Change an account's password, role or namespaces (and enable it again if revoked)."""
    if not await store.read_stream(ev.user_stream(username)):
        raise NotFound(f"No user {username!r}: `tiercel users list` shows the accounts")
    password_hash = None
    if password is not None:
        check_password(password)
        password_hash = await trio.to_thread.run_sync(hash_password, password)
    event = ev.UserUpdated(
        username=username,
        passwordHash=password_hash,
        role=check_role(role) if role is not None else None,
        namespaces=check_namespaces(namespaces) if namespaces is not None else None,
    )
    await store.append(ev.user_stream(username), [event], meta={"actor": actor})


async def revoke_user(store: EventStore, username: str, *, actor: str) -> None:
    """Disable an account: its password and tokens stop authenticating at once."""
    if not await store.read_stream(ev.user_stream(username)):
        raise NotFound(f"No user {username!r}: `tiercel users list` shows the accounts")
    await store.append(
        ev.user_stream(username), [ev.UserRevoked(username=username)], meta={"actor": actor}
    )


async def create_token(
    store: EventStore,
    name: str,
    role: str,
    namespaces: list[str] | tuple[str, ...] = (),
    *,
    owner: str | None = None,
    expires_at: dt.datetime | None,
    actor: str,
) -> tuple[str, str]:
    """Issue a token; return `(token id, token)`. The token is shown only here."""
    if not name or len(name) > 100:
        raise InvalidRequest("A token needs a name of 1 to 100 characters")
    check_role(role)
    scopes = check_namespaces(namespaces)
    token_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = secrets.token_urlsafe(32)
    event = ev.TokenCreated(
        tokenId=token_id,
        name=name,
        secretHash=_secret_hash(secret),
        role=role,
        namespaces=scopes,
        owner=owner,
        expiresAt=expires_at.astimezone(dt.UTC).isoformat() if expires_at else None,
    )
    await store.append(
        ev.token_stream(token_id), [event], expected_version=NO_STREAM, meta={"actor": actor}
    )
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}"


async def revoke_token(store: EventStore, token_id: str, *, actor: str) -> None:
    """Revoke a token: it stops authenticating at once."""
    if not await store.read_stream(ev.token_stream(token_id)):
        raise NotFound(f"No token {token_id!r}: `tiercel tokens list` shows the tokens")
    await store.append(
        ev.token_stream(token_id), [ev.TokenRevoked(tokenId=token_id)], meta={"actor": actor}
    )


async def ensure_admin(
    store: EventStore, username: str = "admin", password: str | None = None
) -> str | None:
    """Create the first account when there is none; return its password when one was made.

    The account is `username` with the admin role and `password` (generated when not given).
    Nothing happens when any account exists; two servers starting at once create it once.
    """
    accounts = await load(store.db)
    if accounts.users:
        return None
    chosen = password if password is not None else secrets.token_urlsafe(18)
    try:
        await create_user(store, username, chosen, ADMIN, actor="system:bootstrap")
    except Conflict:
        return None
    return chosen


def users_json(accounts: Accounts) -> list[dict[str, Any]]:
    """The accounts as the API and the CLI list them (never a hash)."""
    return [
        {
            "username": u.username,
            "role": u.role,
            "namespaces": list(u.namespaces),
            "revoked": u.revoked,
        }
        for u in sorted(accounts.users.values(), key=lambda u: u.username)
    ]


def tokens_json(accounts: Accounts, now: dt.datetime) -> list[dict[str, Any]]:
    """The tokens as the API and the CLI list them (never a secret or its hash)."""
    out = []
    for t in sorted(accounts.tokens.values(), key=lambda t: t.created_at):
        expired = t.expires_at is not None and t.expires_at <= now
        out.append(
            {
                "id": t.token_id,
                "name": t.name,
                "role": t.role,
                "namespaces": list(t.namespaces),
                "owner": t.owner,
                "created": t.created_at.isoformat(),
                "expiresAt": t.expires_at.isoformat() if t.expires_at else None,
                "status": "REVOKED" if t.revoked else "EXPIRED" if expired else "ACTIVE",
            }
        )
    return out
