"""`tiercel users ...` and `tiercel tokens ...`: accounts and API tokens, straight on the database.

They work like the API's routes but need no running server, only the database (embedded when no
`--database-url` is given); every change is recorded with `cli:<os user>@<host>` as its actor.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from engine import accounts
from engine.cli_db import run_on_database

T = TypeVar("T")


def _actor() -> str:
    try:
        who = getpass.getuser()
    except Exception:
        who = "unknown"
    return f"cli:{who}@{socket.gethostname()}"


def _run(database_url: str | None, data_dir: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(store)` against the database (the running server's embedded one, if any)."""
    return run_on_database(database_url, data_dir, work)


def _password(from_stdin: bool, prompt: str = "Password") -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=True))


def _db_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--database-url",
        envvar="TIERCEL_DATABASE_URL",
        default=None,
        help="PostgreSQL URL (env TIERCEL_DATABASE_URL); without it the embedded one is used.",
    )(f)
    f = click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Where the embedded PostgreSQL lives (default: the user's data dir).",
    )(f)
    return f


def register(main: click.Group) -> None:
    """Add the `users` and `tokens` groups to the `tiercel` command."""

    @main.group()
    def users() -> None:
        """Manage accounts (who may log in, with which role, in which namespaces)."""

    @users.command("create")
    @click.argument("username")
    @click.option(
        "--role",
        type=click.Choice(accounts.ROLES),
        default="viewer",
        show_default=True,
        help="viewer reads; runner also runs, kills and resumes; editor also deploys; admin "
        "also manages accounts.",
    )
    @click.option(
        "--namespace",
        "namespaces",
        multiple=True,
        help="A namespace the user may reach, with its children (repeatable; default all).",
    )
    @click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
    @_db_options
    def users_create(
        username: str,
        role: str,
        namespaces: tuple[str, ...],
        password_stdin: bool,
        database_url: str | None,
        data_dir: str | None,
    ) -> None:
        """Create an account."""
        password = _password(password_stdin)
        _run(
            database_url,
            data_dir,
            lambda store: accounts.create_user(
                store, username, password, role, list(namespaces), actor=_actor()
            ),
        )
        click.echo(f"Created user {username} ({role})")

    @users.command("update")
    @click.argument("username")
    @click.option("--password", "new_password", is_flag=True, help="Set a new password.")
    @click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
    @click.option("--role", type=click.Choice(accounts.ROLES), default=None)
    @click.option("--namespace", "namespaces", multiple=True, help="Replace the namespaces.")
    @click.option("--all-namespaces", is_flag=True, help="Let the user reach every namespace.")
    @_db_options
    def users_update(
        username: str,
        new_password: bool,
        password_stdin: bool,
        role: str | None,
        namespaces: tuple[str, ...],
        all_namespaces: bool,
        database_url: str | None,
        data_dir: str | None,
    ) -> None:
        """Change an account's password, role or namespaces (this also re-enables it)."""
        password = _password(password_stdin) if (new_password or password_stdin) else None
        scopes = [] if all_namespaces else (list(namespaces) if namespaces else None)
        _run(
            database_url,
            data_dir,
            lambda store: accounts.update_user(
                store, username, password=password, role=role, namespaces=scopes, actor=_actor()
            ),
        )
        click.echo(f"Updated user {username}")

    @users.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
    @_db_options
    def users_list(as_json: bool, database_url: str | None, data_dir: str | None) -> None:
        """List the accounts."""

        async def work(store: Any) -> list[dict[str, Any]]:
            return accounts.users_json(await accounts.load(store.db))

        listed = _run(database_url, data_dir, work)
        if as_json:
            click.echo(json.dumps(listed, indent=2))
            return
        for u in listed:
            scope = ", ".join(u["namespaces"]) or "all namespaces"
            status = "  REVOKED" if u["revoked"] else ""
            click.echo(f"{u['username']}  {u['role']}  {scope}{status}")

    @users.command("revoke")
    @click.argument("username")
    @_db_options
    def users_revoke(username: str, database_url: str | None, data_dir: str | None) -> None:
        """Disable an account: its password and its tokens stop working at once."""
        _run(
            database_url,
            data_dir,
            lambda store: accounts.revoke_user(store, username, actor=_actor()),
        )
        click.echo(f"Revoked user {username}")

    @main.group()
    def tokens() -> None:
        """Manage API tokens (Authorization: Bearer)."""

    @tokens.command("create")
    @click.option("--name", required=True, help="What the token is for (e.g. ci-deploy).")
    @click.option("--role", type=click.Choice(accounts.ROLES), default="viewer", show_default=True)
    @click.option("--namespace", "namespaces", multiple=True, help="Reachable namespace (repeat).")
    @click.option("--owner", default=None, help="The user it acts for (capped by their role).")
    @click.option(
        "--expires",
        default=f"P{accounts.DEFAULT_TOKEN_DAYS}D",
        show_default=True,
        help="An ISO-8601 duration (P30D), a date, or 'never'.",
    )
    @_db_options
    def tokens_create(
        name: str,
        role: str,
        namespaces: tuple[str, ...],
        owner: str | None,
        expires: str,
        database_url: str | None,
        data_dir: str | None,
    ) -> None:
        """Issue an API token; it is printed once and kept only as a hash."""

        async def work(store: Any) -> tuple[str, str]:
            when = accounts.token_expiry(expires, dt.datetime.now(dt.UTC))
            return await accounts.create_token(
                store, name, role, list(namespaces), owner=owner, expires_at=when, actor=_actor()
            )

        token_id, token = _run(database_url, data_dir, work)
        click.echo(f"Created token {token_id} ({name}, {role}). It is shown only now:", err=True)
        click.echo(token)

    @tokens.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
    @_db_options
    def tokens_list(as_json: bool, database_url: str | None, data_dir: str | None) -> None:
        """List the API tokens (never their secrets)."""

        async def work(store: Any) -> list[dict[str, Any]]:
            return accounts.tokens_json(await accounts.load(store.db), dt.datetime.now(dt.UTC))

        listed = _run(database_url, data_dir, work)
        if as_json:
            click.echo(json.dumps(listed, indent=2))
            return
        for t in listed:
            scope = ", ".join(t["namespaces"]) or "all namespaces"
            click.echo(
                f"{t['id']}  {t['name']}  {t['role']}  {scope}  "
                f"expires {t['expiresAt'] or 'never'}  {t['status']}"
            )

    @tokens.command("revoke")
    @click.argument("token_id")
    @_db_options
    def tokens_revoke(token_id: str, database_url: str | None, data_dir: str | None) -> None:
        """Revoke an API token: it stops working at once."""
        _run(
            database_url,
            data_dir,
            lambda store: accounts.revoke_token(store, token_id, actor=_actor()),
        )
        click.echo(f"Revoked token {token_id}")
