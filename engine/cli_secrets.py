"""`tiercel secrets set|list|delete`: the secrets of namespaces, straight on the database.

A value is read from stdin (its final newline dropped) or typed at a hidden prompt, never taken
from the command line, where `ps` and shell histories would show it. The database is the one
`--database-url` names, or the embedded one of the data directory (that of a `server local`
running on it, when one does). Values are encrypted with the master key, found as the servers
find it: `TIERCEL_SECRET_KEY`, `secret-key` (or Kestra's `kestra.encryption.secret-key`) in the
config file, or the data directory's key file.
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from engine import secrets
from engine.cli_db import run_on_database
from engine.errors import TiercelError

T = TypeVar("T")
MAX_VALUE_BYTES = 64 * 1024
"""The largest secret value accepted (a private key or a service account's JSON fits)."""


def configured_key() -> str | None:
    """The master key given in the config file, if any (`secret-key`, or Kestra's
    `kestra.encryption.secret-key`)."""
    from engine.cli import _setting

    value = _setting("secret-key", None)
    if value:
        return str(value)
    kestra = _setting("kestra", None, {}) or {}
    encryption = kestra.get("encryption") if isinstance(kestra, dict) else None
    key = encryption.get("secret-key") if isinstance(encryption, dict) else None
    return str(key) if key else None


def configure_master_key(data_dir: Path | None, *, generate: bool) -> None:
    """Settle the master key of a server process before it starts (see
    `secrets.configure_master_key`): `generate` for `server local` on its embedded database,
    which no other process shares, so a key made in its data directory is everyone's."""
    try:
        where = secrets.configure_master_key(configured_key(), data_dir, generate=generate)
    except TiercelError as exc:
        raise click.UsageError(exc.message) from None
    if where is None:
        # Logged, not echoed: with `--log-format json` every line a server writes is JSON.
        logging.getLogger("tiercel").warning(
            "No master key for secrets is configured: SECRET inputs are still encrypted, but "
            "secrets cannot be stored (set %s).",
            secrets.KEY_ENV,
        )


def _actor() -> str:
    try:
        who = getpass.getuser()
    except Exception:
        who = "unknown"
    return f"cli:{who}@{socket.gethostname()}"


def _run(database_url: str | None, data_dir: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(store)` against the database, with this process's master key settled."""

    def settle(url: str | None, folder: Path) -> None:
        secrets.configure_master_key(configured_key(), folder, generate=not url)

    return run_on_database(database_url, data_dir, work, settle)


def _read_value() -> str:
    if sys.stdin.isatty():
        value = str(click.prompt("Value", hide_input=True, confirmation_prompt=True))
    else:
        data = sys.stdin.buffer.read(MAX_VALUE_BYTES + 3)
        if len(data) > MAX_VALUE_BYTES + 2:
            raise click.UsageError(f"The value is over {MAX_VALUE_BYTES} bytes")
        try:
            value = data.decode()
        except UnicodeDecodeError:
            raise click.UsageError("The value must be UTF-8 text") from None
        # `echo value |` adds a newline that is no part of the value.
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise click.UsageError("The value is empty: pipe it on stdin, or type it at the prompt")
    return value


def _db_options(f: Callable[..., Any]) -> Callable[..., Any]:
    from engine.cli import config_option

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
        help="Where the embedded PostgreSQL and the master key file live (default: the user's "
        "data dir).",
    )(f)
    return config_option(f)


def register(main: click.Group) -> None:
    """Add the `secrets` group to the `tiercel` command."""

    @main.group("secrets")
    def secrets_group() -> None:
        """Manage the secrets of namespaces, read by `{{ secret('KEY') }}` in flows of the
        namespace and of its children. Values are stored encrypted and never shown again."""

    @secrets_group.command("set")
    @click.argument("namespace")
    @click.argument("key")
    @click.option("--description", default=None, help="What the secret is for.")
    @_db_options
    def secrets_set(
        namespace: str,
        key: str,
        description: str | None,
        database_url: str | None,
        data_dir: str | None,
    ) -> None:
        """Store (or replace) secret KEY of NAMESPACE; its value is read from stdin (e.g.
        `printf %s "$TOKEN" | tiercel secrets set prod.billing API_TOKEN`) or a hidden prompt."""
        _check_names(namespace, key)
        value = _read_value()
        _run(
            database_url,
            data_dir,
            lambda store: secrets.set_secret(
                store, namespace, key, value, description=description, actor=_actor()
            ),
        )
        click.echo(f"Stored secret {key} of namespace {namespace}")

    @secrets_group.command("list")
    @click.argument("namespace")
    @click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
    @_db_options
    def secrets_list(
        namespace: str, as_json: bool, database_url: str | None, data_dir: str | None
    ) -> None:
        """List the secrets of NAMESPACE: keys and who last set them, never values."""
        listed = _run(
            database_url, data_dir, lambda store: secrets.list_secrets(store.db, namespace)
        )
        if as_json:
            click.echo(json.dumps(listed, indent=2))
            return
        for s in listed:
            about = f"  {s['description']}" if s["description"] else ""
            click.echo(f"{s['key']}  {s['updated']}  {s['updatedBy']}{about}")

    @secrets_group.command("delete")
    @click.argument("namespace")
    @click.argument("key")
    @_db_options
    def secrets_delete(
        namespace: str, key: str, database_url: str | None, data_dir: str | None
    ) -> None:
        """Delete secret KEY of NAMESPACE (its value is erased for good)."""
        _run(
            database_url,
            data_dir,
            lambda store: secrets.delete_secret(store, namespace, key, actor=_actor()),
        )
        click.echo(f"Deleted secret {key} of namespace {namespace}")


def _check_names(namespace: str, key: str) -> None:
    """Check the names before asking for a value, so a typo is reported before typing it."""
    try:
        secrets.check_key(namespace, key)
    except TiercelError as exc:
        raise click.UsageError(exc.message) from None
