"""The `tiercel` command line."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import trio
import yaml

from engine import cli_accounts as _accounts_cli
from engine import cli_executions as _executions_cli
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
    ctx = click.get_current_context(silent=True)
    reported = ctx.find_root().meta.setdefault("config_reported", set()) if ctx else set()
    if checked.unknown and path not in reported:  # once, even when --config is given twice
        reported.add(path)
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


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO-8601), level, logger, thread, message,
    and the traceback as `exception` when there is one (`--log-format json`)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": "WARN" if record.levelname == "WARNING" else record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage().strip(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_QUIET_LOGGERS = ("hypercorn.access", "hypercorn.error")
"""Libraries whose INFO lines repeat what Tiercel says itself (shown with --verbose)."""


def _configure_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=TEXT_LOG_FORMAT)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _use_log_format(log_format: str) -> None:
    """Write the engine's logs as text lines or as JSON lines (`--log-format`)."""
    formatter = JsonLogFormatter() if log_format == "json" else logging.Formatter(TEXT_LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


class _Tiercel(click.Group):
    """The root group: logging is set up before the command line is parsed, so what is logged
    while it is read (a settings file's unknown keys) has the format asked for."""

    def main(self, args: Any = None, *rest: Any, **options: Any) -> Any:
        """Set up logging from the arguments, then run the command line."""
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        _configure_logging("-v" in argv or "--verbose" in argv)
        if "--log-format=json" in argv or any(
            a == "--log-format" and b == "json" for a, b in zip(argv, argv[1:], strict=False)
        ):
            _use_log_format("json")
        return super().main(args, *rest, **options)


@click.group(cls=_Tiercel)
@click.version_option(package_name="tiercel", prog_name="tiercel", message="%(prog)s %(version)s")
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """Tiercel: event-sourced orchestration for data, AI and infrastructure workflows."""
    _configure_logging(verbose)


# --- server ----------------------------------------------------------------------------------------


def _http_options(f: F) -> F:
    f = click.option("--port", type=int, default=None, help="HTTP port (default 8080).")(f)
    f = click.option(
        "--host",
        default=None,
        help="Address to bind (default 0.0.0.0; 127.0.0.1 with --no-auth).",
    )(f)
    return click.option(
        "--no-auth",
        is_flag=True,
        default=None,
        help="Serve the API without accounts, on 127.0.0.1 only: for local development.",
    )(f)


def _flows_option(f: F) -> F:
    return click.option(
        "--flows",
        "-f",
        "--flow-path",
        "flows_dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Deploy every flow (*.yaml, *.yml) of this folder before the server is ready; a "
        "flow that does not validate is logged with its file and problem and left out "
        "(-f/--flow-path as in Kestra).",
    )(f)


def _worker_slots_option(f: F) -> F:
    return click.option(
        "--worker-slots",
        "--worker-thread",
        "--thread",
        "worker_slots",
        type=int,
        default=None,
        help="Attempts run at once (default 16; Kestra's --thread and --worker-thread too).",
    )(f)


def _heartbeat_option(f: F) -> F:
    return click.option(
        "--heartbeat-timeout",
        type=float,
        default=None,
        help="Seconds without a heartbeat after which a worker is lost and its attempts run "
        "again elsewhere (default 15).",
    )(f)


def _log_format_option(f: F) -> F:
    f = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
        help="The engine's own logs as text lines (default) or as JSON lines.",
    )(f)
    return config_option(f)


def _database_option(f: F) -> F:
    return click.option(
        "--database-url",
        envvar="TIERCEL_DATABASE_URL",
        default=None,
        help="PostgreSQL URL (env TIERCEL_DATABASE_URL); without it an embedded one is used.",
    )(f)


def _required_database_option(f: F) -> F:
    return click.option(
        "--database-url",
        envvar="TIERCEL_DATABASE_URL",
        default=None,
        help="URL of the PostgreSQL every process of the cluster shares (required; env "
        "TIERCEL_DATABASE_URL).",
    )(f)


def _data_dir_option(f: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Where the embedded PostgreSQL and files live (default: the user's data dir).",
    )(f)


def _storage_dir_option(f: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Where internal storage (execution files) lives: the same shared folder for every "
        "process (default: the user's data dir; TIERCEL_STORAGE_DIR wins).",
    )(f)


@main.group()
@config_option
def server() -> None:
    """Run Tiercel's components."""


@server.command("local", short_help="Everything in one process, on an embedded PostgreSQL.")
@_http_options
@_flows_option
@_worker_slots_option
@_heartbeat_option
@_database_option
@_data_dir_option
@_log_format_option
def server_local(**options: Any) -> None:
    """Everything in one process (executor, worker, projections, API), on an embedded
    PostgreSQL that it starts in --data-dir, or on the one --database-url names."""
    _serve(("executor", "worker", "scheduler", "indexer", "webserver"), embedded_ok=True, **options)


@server.command("standalone", short_help="Everything in one process; needs --database-url.")
@_http_options
@_flows_option
@_worker_slots_option
@_heartbeat_option
@_required_database_option
@_storage_dir_option
@_log_format_option
def server_standalone(**options: Any) -> None:
    """Everything in one process (executor, worker, projections, API) against an existing
    PostgreSQL: needs --database-url."""
    _serve(
        ("executor", "worker", "scheduler", "indexer", "webserver"), embedded_ok=False, **options
    )


@server.command("executor", short_help="The executor only; needs --database-url.")
@_heartbeat_option
@_required_database_option
@_storage_dir_option
@_log_format_option
def server_executor(**options: Any) -> None:
    """The executor, timers and watchdog only: needs --database-url. Run one or more; workers,
    indexers and webservers are other processes on the same database."""
    _serve(("executor",), embedded_ok=False, **options)


@server.command("worker", short_help="A worker only; needs --database-url.")
@_worker_slots_option
@_heartbeat_option
@_required_database_option
@_storage_dir_option
@_log_format_option
def server_worker(**options: Any) -> None:
    """A worker only: needs --database-url (the PostgreSQL the executor uses) and the same
    internal storage folder as the other processes. Runs up to --worker-slots attempts at
    once."""
    _serve(("worker",), embedded_ok=False, **options)


@server.command("scheduler", short_help="The scheduler only; needs --database-url.")
@_required_database_option
@_storage_dir_option
@_log_format_option
def server_scheduler(**options: Any) -> None:
    """The scheduler only (fires the ticks of the flows' Schedule triggers): needs
    --database-url. Several may run against one database: each tick fires once."""
    _serve(("scheduler",), embedded_ok=False, **options)


@server.command("indexer", short_help="The projections only; needs --database-url.")
@_required_database_option
@_storage_dir_option
@_log_format_option
def server_indexer(**options: Any) -> None:
    """The projections (the read models the API searches) only: needs --database-url."""
    _serve(("indexer",), embedded_ok=False, **options)


@server.command("webserver", short_help="The API only; needs --database-url.")
@_http_options
@_required_database_option
@_storage_dir_option
@_log_format_option
def server_webserver(**options: Any) -> None:
    """The REST API, health and metrics only: needs --database-url. Searches read the
    projections, which an indexer process keeps up to date."""
    _serve(("webserver",), embedded_ok=False, **options)


def _serve(roles: tuple[str, ...], *, embedded_ok: bool, **options: Any) -> None:
    _use_log_format(str(_setting("log-format", options.get("log_format"), "text")))
    url = _setting("database-url", options.get("database_url"))
    data_dir = Path(_setting("data-dir", options.get("data_dir")) or _default_data_dir())
    if not url and not embedded_ok:
        raise click.ClickException(
            "This command needs --database-url (or TIERCEL_DATABASE_URL); "
            "`tiercel server local` starts an embedded PostgreSQL instead."
        )
    auth = _auth_settings(options)
    host = _setting("host", options.get("host"), None)
    if not auth["auth_enabled"]:
        if host not in (None, "127.0.0.1", "localhost", "::1"):
            raise click.ClickException(
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
            for key in ("max-body-bytes", "max-upload-bytes", "max-webhook-bytes")
            if _setting(key, None) is not None
        },
    }
    flows_dir = options.get("flows_dir") or _setting("flows", None)
    if flows_dir and not Path(flows_dir).is_dir():
        raise click.ClickException(f"--flows {flows_dir}: no such folder")
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
                log.debug("Starting the embedded PostgreSQL in %s", embedded.pgdata)
                url = await trio.to_thread.run_sync(embedded.start)
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    # Watched from the start, so a signal during start-up stops us too.
                    async for signum in signals:
                        log.info("Received %s: stopping", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)

                async def deploy(ctx: Any) -> None:
                    if flows_dir:
                        await _deploy_folder(ctx.store, Path(flows_dir))

                ctx = await nursery.start(
                    functools.partial(run_server, url, roles, prepare=deploy, **settings)
                )
                if "webserver" in roles:
                    log.info("%s", _where(ctx, settings["host"]))
        finally:
            if embedded is not None:
                await trio.to_thread.run_sync(embedded.stop)
                log.debug("Embedded PostgreSQL stopped")


def _where(ctx: Any, host: str) -> str:
    """The line that says where the API, the web UI and the documentation are."""
    bound = (ctx.extra.get("urls") or [f"http://{host}:{ctx.port}"])[0]
    scheme, _, address = bound.partition("://")
    port = address.rpartition(":")[2]
    shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1") else host
    base = f"{scheme}://{shown}:{port}"
    docs = Path(__file__).resolve().parent.parent / "docs"
    where = f"Tiercel is up: API {base}/api/v1 (OpenAPI {base}/api/v1/openapi.yml), UI {base}/ui/"
    return where + (f", docs {docs.as_uri()}" if docs.is_dir() else "")


async def _deploy_folder(store: Any, folder: Path) -> None:
    """Deploy every flow of `folder`; one that cannot be read or does not validate is logged on
    one line naming its file and its problems, and the others are deployed (as Kestra's
    `--flow-path` does)."""
    from engine.commands import deploy_flow

    deployed = refused = 0
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        try:
            source = path.read_text()
            record = await deploy_flow(store, source, actor="cli")
        except FlowValidationError as exc:
            refused += 1
            problems = "; ".join(f"{path}:{p}" for p in exc.details) or f"{path}: {exc}"
            log.error("Flow not deployed: %s", problems)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            refused += 1
            log.error("Flow not deployed: %s: cannot be read (%s)", path, exc)
            continue
        deployed += 1
        log.debug("Deployed %s.%s revision %s", record.namespace, record.id, record.revision)
    log.info(
        "Deployed %d flow(s) from %s%s",
        deployed,
        folder,
        f"; {refused} not deployed (see above)" if refused else "",
    )


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
        if report.unchecked:
            click.echo(
                f"  ({len(report.unchecked)} of them folded without their decisions made again: "
                "values of their users were erased by a purge, or are sealed with a key this "
                "process cannot unwrap without the master key)"
            )
        if chain_report is not None:
            _echo_chain(chain_report)
    sys.exit(0 if report.ok and (chain_report is None or chain_report.ok) else 1)


@sys_group.command("submit-queued")
@config_option
@_database_option
@_data_dir_option
@click.option("--namespace", default=None, help="Only the queued executions of this namespace.")
@click.option("--flow", "flow_id", default=None, help="Only the queued executions of this flow.")
def sys_submit_queued(
    database_url: str | None, data_dir: str | None, namespace: str | None, flow_id: str | None
) -> None:
    """Start the executions queued by their flow's concurrency limit now, whatever the limit
    (Kestra's `sys submit-queued-execution`); prints how many started."""
    from engine.cli_db import run_on_database
    from engine.concurrency import submit_queued

    started = run_on_database(
        database_url,
        data_dir,
        lambda store: submit_queued(store, namespace=namespace, flow_id=flow_id),
    )
    for xid in started:
        click.echo(xid)
    click.echo(f"Started {len(started)} queued execution(s)")


sys_group.add_command(sys_submit_queued, "submit-queued-execution")


@sys_group.command("reindex")
@config_option
@_database_option
@_data_dir_option
@click.option(
    "--projection",
    default=None,
    metavar="NAME",
    help=(
        "Rebuild this projection only (flows, executions, logs, metrics, dashboards, audit);"
        " default: all of them."
    ),
)
def sys_reindex(database_url: str | None, data_dir: str | None, projection: str | None) -> None:
    """Rebuild read models from position 0 into new tables while the system runs, and swap
    them in once caught up (projections/reindex.py); a progress bar goes to stderr. Connect
    as the owner of the tables (as for `migrate`): it creates and renames tables."""
    import importlib.metadata

    from engine.cli_db import running_server_url
    from engine.embedded import EmbeddedPostgres
    from engine.server import storage_root
    from engine.storage import LocalStorage

    url = _setting("database-url", database_url)
    folder = Path(_setting("data-dir", data_dir) or _default_data_dir())
    configured = _config_server_options().get("storage")
    storage = configured if configured is not None else LocalStorage(storage_root(folder))
    # Registered by the projections package (the engine does not import it).
    (entry,) = importlib.metadata.entry_points(group="tiercel.commands", name="reindex")
    embedded = None
    try:
        if not url:
            embedded = EmbeddedPostgres(folder)
            try:
                url = embedded.start()
            except TiercelError:
                url, embedded = running_server_url(embedded.pgdata), None  # a server holds it
                if url is None:
                    raise
        rebuilt = entry.load()(url, storage, projection)
    except TiercelError as exc:
        _fail(exc)
        return
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--projection") from exc
    finally:
        if embedded is not None:
            embedded.stop()
    for r in rebuilt:
        click.echo(f"Rebuilt {r.projection} up to position {r.position} in {r.seconds:.1f}s")


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


LAST_LOG_LINES = 10
"""Log lines of a failed task run that `flow test` shows (its last ones)."""


class _CliError(Exception):
    """A problem `flow test` reports on one line (or as the `error` of its JSON)."""

    def __init__(self, message: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error or {"message": message, "details": []}


def _parse_inputs(pairs: tuple[str, ...]) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """The `--input KEY=VALUE` values, and the files of the `KEY=@PATH` ones (name, content)."""
    values: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _CliError(f"--input {pair!r} must be KEY=VALUE (or KEY=@FILE for a file)")
        if value.startswith("@") and len(value) > 1:
            path = Path(value[1:])
            try:
                files[key] = (path.name, path.read_bytes())
            except OSError as exc:
                raise _CliError(
                    f"--input {key}: cannot read {path}: {exc.strerror or exc}"
                ) from None
            continue
        values[key] = value
    return values, files


def _tiercel_error(exc: BaseException) -> TiercelError | None:
    """The TiercelError `exc` is or holds (a nursery wraps what its tasks raise in a group)."""
    if isinstance(exc, TiercelError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _tiercel_error(inner)
            if found is not None:
                return found
    return None


def _one_line(exc: TiercelError) -> str:
    """A domain error on one line: its problems when it has any, else its message."""
    details = getattr(exc, "details", None) or []
    if details:
        return "; ".join(getattr(p, "message", str(p)) for p in details)
    return " ".join(str(exc).split())


@flow.command("test")
@config_option
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An input (repeatable); KEY=@PATH gives a file to a FILE input.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--timeout", type=float, default=300.0, help="Seconds to wait for the end.")
@_database_option
def flow_test(
    file: str, inputs: tuple[str, ...], as_json: bool, timeout: float, database_url: str | None
) -> None:
    """Run one flow to its end on a throwaway embedded database and print a summary: each
    task run's state and outputs, and for a failed one its error and last log lines.

    Exits 0 when the execution ends in SUCCESS or WARNING, 1 otherwise. A missing file, a bad
    input or a bad setting is one line (or the `error` of the JSON), never a traceback."""
    from engine.commands import new_execution_id
    from engine.flow import parse_flow
    from engine.inputs import resolve_inputs
    from engine.storage import input_prefix, to_uri

    def fail(problem: _CliError) -> NoReturn:
        if as_json:
            click.echo(json.dumps({"state": None, "error": problem.error}, indent=2))
        else:
            click.echo(f"Error: {problem.message}", err=True)
        sys.exit(1)

    try:
        source = Path(file).read_text()
    except FileNotFoundError:
        fail(_CliError(f"Flow file {file} does not exist"))
    except (OSError, UnicodeDecodeError) as exc:
        fail(_CliError(f"Cannot read flow file {file}: {getattr(exc, 'strerror', None) or exc}"))
    try:
        flow = parse_flow(source, origin=file)
    except FlowValidationError as exc:
        if as_json:
            fail(_CliError(str(exc), exc.to_json()))
        click.echo(str(exc).replace("Invalid flow", f"Invalid flow {file}"))
        sys.exit(1)
    try:
        given, files = _parse_inputs(inputs)
        execution_id = new_execution_id()
        declared = {i.id_: i for i in flow.inputs}
        for key, value in list(given.items()):
            inp = declared.get(key)
            if inp is not None and inp.type == "FILE" and not value.startswith("kestra://"):
                # Plain text for a FILE input is stored as a file, as the API does.
                extension = inp.extension or ".txt"
                name = key + ("" if extension.startswith(".") else ".") + extension
                files[key] = (name, given.pop(key).encode())
        planned = {
            key: to_uri(input_prefix(flow.namespace, flow.id, execution_id, key) + "/" + name)
            for key, (name, _) in files.items()
        }
        # Checked before any database starts: a bad input is one line and costs nothing.
        resolve_inputs(flow, {**given, **planned})
    except _CliError as problem:
        fail(problem)
    except TiercelError as exc:
        fail(_CliError(_one_line(exc), exc.to_json()))
    logging.getLogger().setLevel(logging.WARNING)
    try:
        summary = trio.run(_flow_test, source, given, timeout, database_url, files, execution_id)
    except Exception as exc:
        found = _tiercel_error(exc)
        if found is None:
            raise
        fail(_CliError(_one_line(found), found.to_json()))
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(f"Execution {summary['id']}: {summary['state']}")
        for run in summary["taskRuns"]:
            value = f"[{run['value']}]" if run.get("value") is not None else ""
            outputs = json.dumps(run["outputs"]) if run["outputs"] else ""
            click.echo(f"  {run['state']:<9} {run['taskId']}{value} {outputs}".rstrip())
            if run.get("error"):
                click.echo(f"            error: {run['error']}")
            for line in run.get("lastLogs", []):
                click.echo(f"            {line['level']:<5} {line['message']}")
        if summary["outputs"]:
            click.echo("Outputs: " + json.dumps(summary["outputs"]))
    sys.exit(0 if summary["state"] in ("SUCCESS", "WARNING") else 1)


def _migrations_key() -> str:
    """What the template cluster's setup depends on: the migrations, by name and content."""
    import hashlib

    from engine.migrate import migrations_dir

    digest = hashlib.sha256()
    for path in sorted(migrations_dir().glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


async def _flow_test(
    source: str,
    inputs: dict[str, str],
    timeout: float,
    url: str | None,
    files: dict[str, tuple[str, bytes]] | None = None,
    execution_id: str | None = None,
) -> dict[str, Any]:
    from engine.commands import create_execution, deploy_flow, wait_for_end
    from engine.embedded import EmbeddedPostgres, seed_from_template
    from engine.migrate import migrate
    from engine.server import run_server
    from engine.storage import input_prefix

    variables = _config_server_options()["template_variables"]  # globals and envs of the file
    with tempfile.TemporaryDirectory(prefix="tiercel-flow-test-") as tmp:
        embedded = None
        if not url:
            # A copy of a cluster made and migrated once: no initdb, no migrations per run.
            await trio.to_thread.run_sync(
                lambda: seed_from_template(Path(tmp), migrate, _migrations_key())
            )
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
                given: dict[str, Any] = dict(inputs)
                for key, (name, data) in (files or {}).items():
                    prefix = input_prefix(record.namespace, record.id, execution_id or "", key)
                    given[key] = await trio.to_thread.run_sync(ctx.storage.put, prefix, name, data)
                execution_id = await create_execution(
                    ctx.store,
                    record.namespace,
                    record.id,
                    given,
                    actor="cli",
                    execution_id=execution_id,
                )
                state = await wait_for_end(ctx.store, ctx.notifier, execution_id, timeout=timeout)
                logs = _last_logs(await ctx.store.read_execution(execution_id))
                nursery.cancel_scope.cancel()
        finally:
            if embedded is not None:
                await trio.to_thread.run_sync(embedded.stop)
    runs = []
    for r in state.taskruns.values():
        run: dict[str, Any] = {
            "taskId": r.taskId,
            "value": r.value,
            "state": r.state,
            "outputs": r.outputs or {},
        }
        if r.state in ("FAILED", "KILLED", "WARNING"):
            run["error"] = r.message
            run["lastLogs"] = logs.get(r.id, [])
        runs.append(run)
    return {"id": state.id, "state": state.state, "taskRuns": runs, "outputs": state.outputs or {}}


def _last_logs(events: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """The last `LAST_LOG_LINES` log lines of each task run (level and message), by its id."""
    from engine.events import AttemptLogged

    lines: dict[str, list[dict[str, Any]]] = {}
    for stored in events:
        if isinstance(stored.event, AttemptLogged):
            kept = lines.setdefault(stored.event.taskRunId, [])
            kept.extend(
                {"level": line.get("level", ""), "message": str(line.get("message", ""))}
                for line in stored.event.lines
            )
            del kept[:-LAST_LOG_LINES]
    return lines


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
_executions_cli.register(main)

if __name__ == "__main__":
    main()
