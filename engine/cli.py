"""The `tiercel` command line."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio
import yaml

from engine import cli_accounts as _accounts_cli
from engine import cli_secrets as _secrets_cli
from engine.errors import FlowValidationError, TiercelError

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("tiercel")


# --- configuration -------------------------------------------------------------------------------


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise click.ClickException(f"Cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "it cannot be parsed"
        raise click.ClickException(
            f"Config file {path} is not valid YAML{where}: {problem}"
        ) from None
    from engine.config import ConfigError, read_settings

    try:
        # Tiercel's keys and Kestra's (engine/config.py); a wrong type is one line naming it.
        checked = read_settings(data, f"Config file {path}")
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    if checked.unknown:
        log.warning(
            "Config file %s: not read by Tiercel, ignored: %s", path, ", ".join(checked.unknown)
        )
    return checked.values


def _config_server_options() -> dict[str, Any]:
    """What the settings file gives `run_server` besides the flags: the `globals` and `envs`
    of templates, where internal storage and task working directories live."""
    from engine.config import ConfigError, template_variables
    from engine.storage import LocalStorage

    ctx = click.get_current_context(silent=True)
    config = ctx.find_root().meta.get("config", {}) if ctx else {}
    try:
        options: dict[str, Any] = {"template_variables": template_variables(config, os.environ)}
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    # The environment wins over the file, as for every other setting.
    if config.get("storage-dir") and not os.environ.get("TIERCEL_STORAGE_DIR"):
        options["storage"] = LocalStorage(Path(config["storage-dir"]))
    if config.get("tmp-dir"):
        options["work_dir"] = Path(config["tmp-dir"])
    return options


def _config_callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        root = ctx.find_root()
        root.meta.setdefault("config", {}).update(_load_config(value))


def config_option(f: F) -> F:
    """`--config FILE`, accepted on the group and on every command (before or after it)."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        expose_value=False,
        is_eager=True,
        callback=_config_callback,
        help="YAML file with settings (database-url, port, data-dir, ...).",
    )(f)


def _setting(name: str, given: Any, default: Any = None) -> Any:
    if given is not None:
        return given
    ctx = click.get_current_context(silent=True)
    config = ctx.find_root().meta.get("config", {}) if ctx else {}
    for key in (name, name.replace("-", "_"), name.replace("-", "")):
        if key in config:
            return config[key]
    return default


def _fail(exc: TiercelError) -> None:
    click.echo(str(exc), err=True)
    sys.exit(1)


# --- root ------------------------------------------------------------------------------------------


@click.group()
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """Tiercel: event-sourced orchestration for data, AI and infrastructure workflows."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)


# --- server ----------------------------------------------------------------------------------------


def _server_options(f: F) -> F:
    f = click.option("--port", type=int, default=None, help="HTTP port (default 8080).")(f)
    f = click.option(
        "--host",
        default=None,
        help="Address to bind (default 0.0.0.0; 127.0.0.1 with --no-auth).",
    )(f)
    f = click.option(
        "--no-auth",
        is_flag=True,
        default=None,
        help="Serve the API without accounts, on 127.0.0.1 only: for local development.",
    )(f)
    f = click.option(
        "--flows",
        "flows_dir",
        type=click.Path(file_okay=False, exists=True),
        default=None,
        help="Deploy every YAML flow in this folder at start.",
    )(f)
    f = click.option("--worker-slots", type=int, default=None, help="Attempts run at once.")(f)
    f = click.option(
        "--heartbeat-timeout",
        type=float,
        default=None,
        help="Seconds without a heartbeat after which a worker is lost and its attempts run "
        "again elsewhere (default 15).",
    )(f)
    return config_option(f)


def _database_option(f: F) -> F:
    return click.option(
        "--database-url",
        envvar="TIERCEL_DATABASE_URL",
        default=None,
        help="PostgreSQL URL (env TIERCEL_DATABASE_URL); without it an embedded one is used.",
    )(f)


def _data_dir_option(f: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Where the embedded PostgreSQL and files live (default: the user's data dir).",
    )(f)


@main.group()
@config_option
def server() -> None:
    """Run Tiercel's components."""


@server.command("local")
@_server_options
@_database_option
@_data_dir_option
def server_local(**options: Any) -> None:
    """Everything in one process, on an embedded PostgreSQL unless --database-url is given."""
    _serve(("executor", "worker", "indexer", "webserver"), embedded_ok=True, **options)


@server.command("standalone")
@_server_options
@_database_option
@_data_dir_option
def server_standalone(**options: Any) -> None:
    """Everything in one process against an existing PostgreSQL (--database-url)."""
    _serve(("executor", "worker", "indexer", "webserver"), embedded_ok=False, **options)


def _role_command(role: str, roles: tuple[str, ...], doc: str) -> None:
    @server.command(role, help=doc)
    @_server_options
    @_database_option
    @_data_dir_option
    def command(**options: Any) -> None:
        _serve(roles, embedded_ok=False, **options)


_role_command("executor", ("executor",), "The executor, timers and watchdog only.")
_role_command("worker", ("worker",), "A worker only.")
_role_command("indexer", ("indexer",), "The projections (read models) only.")
_role_command("webserver", ("webserver",), "The REST API and web UI only.")


def _serve(roles: tuple[str, ...], *, embedded_ok: bool, **options: Any) -> None:
    url = _setting("database-url", options.get("database_url"))
    data_dir = Path(_setting("data-dir", options.get("data_dir")) or _default_data_dir())
    if not url and not embedded_ok:
        raise click.UsageError(
            "This command needs --database-url (or TIERCEL_DATABASE_URL); "
            "`tiercel server local` starts an embedded PostgreSQL instead."
        )
    auth = _auth_settings(options)
    host = _setting("host", options.get("host"), None)
    if not auth["auth_enabled"]:
        if host not in (None, "127.0.0.1", "localhost", "::1"):
            raise click.UsageError(
                f"--no-auth serves without credentials, so it binds 127.0.0.1 only; "
                f"drop --host {host} or turn authentication on"
            )
        host = "127.0.0.1"
    settings = {
        **auth,
        "host": host or "0.0.0.0",
        "port": int(_setting("port", options.get("port"), 8080)),
        "data_dir": data_dir,
        "worker_slots": int(_setting("worker-slots", options.get("worker_slots"), 16)),
        "heartbeat_timeout": float(
            _setting("heartbeat-timeout", options.get("heartbeat_timeout"), 15.0)
        ),
        **_config_server_options(),
        # Body limits (api/bodies.py): the environment wins over these configuration keys.
        "extra": {
            key.replace("-", "_"): _setting(key, None)
            for key in ("max-body-bytes", "max-upload-bytes")
            if _setting(key, None) is not None
        },
    }
    flows_dir = options.get("flows_dir") or _setting("flows", None)
    _secrets_cli.configure_master_key(data_dir, generate=not url)
    try:
        trio.run(functools.partial(_serve_async, roles, url, data_dir, flows_dir, settings))
    except TiercelError as exc:
        _fail(exc)


def _auth_settings(options: dict[str, Any]) -> dict[str, Any]:
    """Authentication settings from the flags, the config file and the environment.

    Kestra's `kestra.server.basic-auth` keys work: `enabled: false` is `--no-auth`, and its
    `username`/`password` are the first account's.
    """
    kestra = _setting("kestra", None, {}) or {}
    basic = (
        ((kestra.get("server") or {}).get("basic-auth") or {}) if isinstance(kestra, dict) else {}
    )
    no_auth = options.get("no_auth") or _setting("no-auth", None, False)
    if isinstance(basic, dict) and basic.get("enabled") is False:
        no_auth = True
    password = os.environ.get("TIERCEL_ADMIN_PASSWORD") or _setting("admin-password", None)
    username = _setting("admin-username", None)
    if isinstance(basic, dict):
        password = password or basic.get("password")
        username = username or basic.get("username")
    origins = os.environ.get("TIERCEL_ALLOWED_ORIGINS") or _setting("allowed-origins", None) or ()
    if isinstance(origins, str):
        origins = [o.strip() for o in origins.split(",") if o.strip()]
    return {
        "auth_enabled": not no_auth,
        "admin_username": str(username or "admin"),
        "admin_password": str(password) if password else None,
        "allowed_origins": tuple(str(o) for o in origins),
    }


def _default_data_dir() -> Path:
    from engine.embedded import default_data_dir

    return default_data_dir()


async def _serve_async(
    roles: tuple[str, ...],
    url: str | None,
    data_dir: Path,
    flows_dir: str | None,
    settings: dict[str, Any],
) -> None:
    from engine.embedded import EmbeddedPostgres
    from engine.server import run_server

    embedded = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            if not url:
                # A signal meanwhile waits in the receiver; the server is stopped below.
                embedded = EmbeddedPostgres(data_dir)
                log.info("Starting the embedded PostgreSQL in %s", embedded.pgdata)
                url = await trio.to_thread.run_sync(embedded.start)
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    # Watched from the start, so a signal during start-up stops us too.
                    async for signum in signals:
                        log.info("Received %s: stopping", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                ctx = await nursery.start(functools.partial(run_server, url, roles, **settings))
                if flows_dir:
                    await _deploy_folder(ctx.store, Path(flows_dir))
                if "webserver" in roles:
                    log.info("Tiercel is up on http://localhost:%s", settings["port"])
        finally:
            if embedded is not None:
                was_running = bool(embedded.url)
                await trio.to_thread.run_sync(embedded.stop)
                if was_running:
                    log.info("Embedded PostgreSQL stopped")


async def _deploy_folder(store: Any, folder: Path) -> None:
    from engine.commands import deploy_flow

    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        try:
            record = await deploy_flow(store, path.read_text(), actor="cli")
            log.info("Deployed %s.%s revision %s", record.namespace, record.id, record.revision)
        except FlowValidationError as exc:
            log.error("Not deployed: %s", str(exc).replace("Invalid flow", f"Invalid flow {path}"))


# --- migrate ---------------------------------------------------------------------------------------


@main.command()
@config_option
@_database_option
@_data_dir_option
def migrate(database_url: str | None, data_dir: str | None) -> None:
    """Apply the database migrations that are not applied yet."""
    from engine.embedded import EmbeddedPostgres
    from engine.migrate import migrate as apply

    url = _setting("database-url", database_url)
    embedded = None
    if not url:
        embedded = EmbeddedPostgres(Path(_setting("data-dir", data_dir) or _default_data_dir()))
        url = embedded.start()
    try:
        applied = apply(url)
    except TiercelError as exc:
        _fail(exc)
        return
    finally:
        if embedded is not None:
            embedded.stop()
    click.echo("Applied: " + ", ".join(applied) if applied else "The database is up to date.")


# --- sys -------------------------------------------------------------------------------------------


@main.group("sys")
@config_option
def sys_group() -> None:
    """Check and maintain a Tiercel database."""


@sys_group.command("verify")
@config_option
@_database_option
@_data_dir_option
@click.option("--execution", "execution_id", default=None, help="Verify this execution only.")
@click.option(
    "--since",
    type=int,
    default=0,
    help="Verify the executions with events after this position only.",
)
@click.option(
    "--chain",
    is_flag=True,
    help="Also recompute the hash chain of every event and report the first broken position "
    "(a row changed, removed, inserted or reordered, even by a superuser).",
)
@click.option(
    "--anchor",
    default=None,
    metavar="POSITION:HASH",
    help="With --chain: a head noted from an earlier run; a log rewritten since is reported.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def sys_verify(
    database_url: str | None,
    data_dir: str | None,
    execution_id: str | None,
    since: int,
    chain: bool,
    anchor: str | None,
    as_json: bool,
) -> None:
    """Refold recorded executions through this version's code and report every one whose
    state or decisions differ from what was recorded (with the first diverging event), and
    every execution the executor parked; with --chain, also check that no event row was
    changed, removed or reordered. Exits 1 when anything differs.

    Run it before and after an upgrade: a difference means the new version would read old
    histories differently."""
    import psycopg

    from engine.embedded import EmbeddedPostgres
    from engine.server import storage_root
    from engine.storage import LocalStorage
    from engine.verify import ChainReport, verify_chain, verify_database

    noted = _parse_anchor(anchor) if anchor is not None else None
    if noted is not None and not chain:
        raise click.UsageError("--anchor needs --chain")
    chain_report: ChainReport | None = None

    url = _setting("database-url", database_url)
    folder = Path(_setting("data-dir", data_dir) or _default_data_dir())
    configured = _config_server_options().get("storage")
    storage = configured if configured is not None else LocalStorage(storage_root(folder))
    embedded = None
    try:
        if not url:
            embedded = EmbeddedPostgres(folder)
            url = embedded.start()
        with psycopg.Connection.connect(url, autocommit=True, connect_timeout=10) as conn:
            report = verify_database(conn, execution=execution_id, since=since, storage=storage)
            if chain:
                chain_report = verify_chain(conn, anchor=noted)
    except TiercelError as exc:
        _fail(exc)
        return
    except psycopg.Error as exc:
        click.echo(f"Cannot read the database: {exc}".strip(), err=True)
        sys.exit(2)
    finally:
        if embedded is not None:
            embedded.stop()
    if as_json:
        import msgspec

        payload = msgspec.to_builtins(report)
        payload["ok"] = report.ok and (chain_report is None or chain_report.ok)
        if chain_report is not None:
            payload["chain"] = msgspec.to_builtins(chain_report) | {"ok": chain_report.ok}
        click.echo(json.dumps(payload, indent=2))
    else:
        for f in report.findings:
            if f.kind in ("parked", "unreadable"):
                click.echo(f"✗ execution {f.executionId}: {f.kind} at position {f.position}")
                click.echo(f"  {f.recorded[0]}")
                continue
            what = "decisions differ" if f.kind == "decisions" else "state differs"
            click.echo(
                f"✗ execution {f.executionId}: {what} at position {f.position} ({f.eventType})"
            )
            for line in f.recorded:
                click.echo(f"  recorded: {line}")
            for line in f.replayed:
                click.echo(f"  replayed: {line}")
        verdict = (
            "every history refolds to the same state and decisions"
            if report.ok
            else f"{len(report.findings)} finding(s)"
        )
        click.echo(
            f"Verified {report.executions} execution(s), {report.events} event(s): {verdict}"
        )
        if chain_report is not None:
            _echo_chain(chain_report)
    sys.exit(0 if report.ok and (chain_report is None or chain_report.ok) else 1)


def _parse_anchor(value: str) -> tuple[int, bytes]:
    position, _, digest = value.partition(":")
    try:
        parsed = (int(position), bytes.fromhex(digest.removeprefix("sha256:")))
    except ValueError:
        parsed = (0, b"")
    if parsed[0] <= 0 or len(parsed[1]) != 32:
        raise click.BadParameter(
            f"{value!r} is not POSITION:HASH (a position and the 64 hex digits of its hash, as "
            "sys verify --chain prints the head)",
            param_hint="--anchor",
        )
    return parsed


def _echo_chain(report: Any) -> None:
    for found in report.breaks:
        click.echo(f"✗ chain broken at position {found.position}: {found.reason}")
    if report.truncated:
        click.echo("  (more breaks not listed)")
    if report.ok:
        click.echo(
            f"Chain: {report.rows} row(s) intact, head {report.head}:{report.headHash} "
            "(note it elsewhere and pass it later as --anchor)"
        )
    else:
        click.echo(f"Chain: {report.rows} row(s), broken at position {report.breaks[0].position}")


# --- flows -----------------------------------------------------------------------------------------


@main.group()
@config_option
def flow() -> None:
    """Validate and test flows."""


@flow.command("validate")
@config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def flow_validate(files: tuple[str, ...]) -> None:
    """Validate flow files; exit 1 and print every problem when any is invalid."""
    from engine.flow import parse_flow

    bad = 0
    for name in files:
        warnings: list[Any] = []
        try:
            parsed = parse_flow(Path(name).read_text(), origin=name, warnings=warnings)
        except FlowValidationError as exc:
            bad += 1
            click.echo(f"✗ {name}")
            for problem in exc.details:
                click.echo(f"  {name}:{problem}")
            continue
        click.echo(f"✓ {name} ({parsed.namespace}.{parsed.id})")
        # Valid, but what it asks for is not all honoured: said, never silently ignored.
        for warning in warnings:
            click.echo(f"  warning: {name}:{warning}")
    if bad:
        click.echo(f"{bad} of {len(files)} file(s) invalid")
        sys.exit(1)


def _parse_inputs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"'{pair}' must be KEY=VALUE", param_hint="--input")
        key, value = pair.split("=", 1)
        out[key] = value
    return out


@flow.command("test")
@config_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "inputs", multiple=True, help="An input as KEY=VALUE (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--timeout", type=float, default=300.0, help="Seconds to wait for the end.")
@_database_option
def flow_test(
    file: str, inputs: tuple[str, ...], as_json: bool, timeout: float, database_url: str | None
) -> None:
    """Run one flow to its end on a throwaway embedded database and print a summary."""
    from engine.flow import parse_flow

    source = Path(file).read_text()
    try:
        parse_flow(source, origin=file)
    except FlowValidationError as exc:
        click.echo(str(exc).replace("Invalid flow", f"Invalid flow {file}"))
        sys.exit(1)
    given = _parse_inputs(inputs)
    logging.getLogger().setLevel(logging.WARNING)
    try:
        summary = trio.run(_flow_test, source, given, timeout, database_url)
    except TiercelError as exc:
        if as_json:
            click.echo(json.dumps({"state": None, "error": exc.to_json()}, indent=2))
        else:
            click.echo(str(exc))
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(f"Execution {summary['id']}: {summary['state']}")
        for run in summary["taskRuns"]:
            value = f"[{run['value']}]" if run.get("value") is not None else ""
            outputs = json.dumps(run["outputs"]) if run["outputs"] else ""
            click.echo(f"  {run['state']:<9} {run['taskId']}{value} {outputs}".rstrip())
        if summary["outputs"]:
            click.echo("Outputs: " + json.dumps(summary["outputs"]))
    sys.exit(0 if summary["state"] in ("SUCCESS", "WARNING") else 1)


async def _flow_test(
    source: str, inputs: dict[str, str], timeout: float, url: str | None
) -> dict[str, Any]:
    from engine.commands import create_execution, deploy_flow, wait_for_end
    from engine.embedded import EmbeddedPostgres
    from engine.server import run_server

    variables = _config_server_options()["template_variables"]  # globals and envs of the file
    with tempfile.TemporaryDirectory(prefix="tiercel-flow-test-") as tmp:
        embedded = None
        if not url:
            embedded = EmbeddedPostgres(Path(tmp))
            url = await trio.to_thread.run_sync(embedded.start)
        try:
            async with trio.open_nursery() as nursery:
                ctx = await nursery.start(
                    functools.partial(
                        run_server,
                        url,
                        ("executor", "worker"),
                        data_dir=Path(tmp),
                        template_variables=variables,
                        heartbeat_interval=1.0,
                    )
                )
                record = await deploy_flow(ctx.store, source, actor="cli")
                execution_id = await create_execution(
                    ctx.store, record.namespace, record.id, inputs, actor="cli"
                )
                state = await wait_for_end(ctx.store, ctx.notifier, execution_id, timeout=timeout)
                nursery.cancel_scope.cancel()
        finally:
            if embedded is not None:
                await trio.to_thread.run_sync(embedded.stop)
    return {
        "id": state.id,
        "state": state.state,
        "taskRuns": [
            {"taskId": r.taskId, "value": r.value, "state": r.state, "outputs": r.outputs or {}}
            for r in state.taskruns.values()
        ],
        "outputs": state.outputs or {},
    }


# --- plugins ---------------------------------------------------------------------------------------


@main.group()
@config_option
def plugins() -> None:
    """Inspect installed task types."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON, as the API does.")
@config_option
def plugins_list(as_json: bool) -> None:
    """Print every installed task type (aliases under their canonical name) with a one-line
    description; the same list as GET /api/v1/plugins."""
    from engine.plugin import plugin_list

    entries = plugin_list()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    width = max((len(e["type"]) for e in entries), default=0)
    for entry in entries:
        summary = " ".join(entry["description"].split("\n\n", 1)[0].split())
        click.echo(f"{entry['type'].ljust(width)}  {summary}".rstrip())


_accounts_cli.register(main)
_secrets_cli.register(main)

if __name__ == "__main__":
    main()
