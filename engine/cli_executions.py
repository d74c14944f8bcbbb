"""`tiercel executions replay|restart|kill|delete|labels|state`: bulk operations, through the API.

The executions are chosen as the API's bulk route takes them: `--query 'state:FAILED
namespace:company.team'` (the executions search's query), or `--ids` (repeated, or comma
separated). `--dry-run` prints how many there are and a sample of what would happen, and
changes nothing; otherwise a bulk job is started, and `--wait` follows it with a progress bar
until it ends, then prints its report. `tiercel executions job ID` shows a job (`--wait`
follows it); `pause`, `resume` and `cancel` steer it.

The server is `--server` (or `TIERCEL_SERVER`, default http://localhost:8080); credentials are
`--token` (`TIERCEL_TOKEN`, an API token) or `--user` with `TIERCEL_PASSWORD` (or a prompt).
A bulk job runs on the server: interrupting `--wait` leaves it running.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import click
import httpx

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SERVER = "http://localhost:8080"
POLL_SECONDS = 0.5
ACTIONS = ("replay", "restart", "kill", "delete", "labels", "state")


class Api:
    """The server's API, with the command's credentials."""

    def __init__(self, server: str, token: str | None, user: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        auth: tuple[str, str] | None = None
        if user and not token:
            password = os.environ.get("TIERCEL_PASSWORD")
            if password is None:
                password = getpass.getpass(f"Password of {user}: ")
            auth = (user, password)
        self.server = server.rstrip("/")
        # Each request logged by httpx would break the progress bar's line.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.http = httpx.Client(base_url=self.server, headers=headers, auth=auth, timeout=60)

    def call(self, method: str, path: str, **options: Any) -> Any:
        """The answer's JSON; a refusal is printed and ends the command with status 1."""
        try:
            answer = self.http.request(method, path, **options)
        except httpx.HTTPError as exc:
            raise click.ClickException(
                f"Cannot reach the Tiercel server at {self.server}: {exc} "
                "(set --server or TIERCEL_SERVER)"
            ) from None
        if answer.status_code >= 400:
            try:
                message = answer.json().get("message") or answer.text
            except ValueError:
                message = answer.text
            raise click.ClickException(f"{answer.status_code}: {message}")
        return answer.json()


def _api_options(f: F) -> F:
    for option in reversed(
        [
            click.option(
                "--server",
                envvar="TIERCEL_SERVER",
                default=DEFAULT_SERVER,
                show_default=True,
                help="The Tiercel server's URL (TIERCEL_SERVER).",
            ),
            click.option("--token", envvar="TIERCEL_TOKEN", help="An API token (TIERCEL_TOKEN)."),
            click.option(
                "--user",
                envvar="TIERCEL_USER",
                help="A user name; its password is TIERCEL_PASSWORD, or asked.",
            ),
        ]
    ):
        f = option(f)
    return f


def _ids(values: tuple[str, ...]) -> list[str]:
    return [i.strip() for v in values for i in v.split(",") if i.strip()]


def _labels(values: tuple[str, ...]) -> list[dict[str, str]]:
    out = []
    for value in values:
        key, sep, rest = value.partition(":")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: give labels as key:value", param_hint="--label")
        out.append({"key": key, "value": rest})
    return out


def _progress(api: Api, job: dict[str, Any]) -> dict[str, Any]:
    """Follow `job` with a progress bar until it is no longer running; return it."""
    total = max(int(job["total"]), 1)
    with click.progressbar(
        length=total,
        label=f"{job['action']} {job['id']}",
        show_pos=True,
        file=sys.stderr,
    ) as bar:
        shown = 0
        while True:
            done = min(int(job["done"]), total)
            if done > shown:
                bar.update(done - shown)
                shown = done
            if job["state"] != "RUNNING":
                break
            time.sleep(POLL_SECONDS)
            job = api.call("GET", f"/api/v1/bulk/{job['id']}")
    return dict(api.call("GET", f"/api/v1/bulk/{job['id']}"))


def _print_job(job: dict[str, Any]) -> None:
    click.echo(
        f"Bulk job {job['id']} ({job['action']}): {job['state']}, {job['done']}/{job['total']} "
        f"done, {job['failed']} failed, {job['skipped']} skipped"
    )
    for item in job.get("items") or []:
        if item["outcome"] != "SUCCESS":
            click.echo(f"  {item['id']}: {item['outcome']} {item.get('message', '')}".rstrip())


def register(main: click.Group) -> None:
    """Add the `executions` group to the `tiercel` command."""

    @main.group("executions")
    def executions_group() -> None:
        """Act on many executions at once (replay, restart, kill, delete, labels, state),
        chosen by a query or by ids, as a bulk job on the server."""

    def action_command(action: str, help_text: str) -> None:
        @executions_group.command(action, help=help_text)
        @click.option("--query", "-q", help="The executions search's query, e.g. "
                      "'state:FAILED namespace:company.team'.")  # fmt: skip
        @click.option("--ids", multiple=True, help="Execution ids (repeat, or comma separated).")
        @click.option("--dry-run", is_flag=True, help="Count and sample; change nothing.")
        @click.option("--wait", is_flag=True, help="Follow the job until it ends.")
        @click.option("--request-id", help="Re-running with the same id finds the same job.")
        @click.option("--rate", type=float, help="Items per second at most.")
        @click.option("--reason", help="Recorded with each change, for the audit trail.")
        @click.option("--label", "labels", multiple=True, help="key:value (labels only).")
        @click.option("--state", "state", help="The new state (state only): SUCCESS, FAILED...")
        @click.option("--revision", type=int, help="The flow revision to replay on (replay).")
        @_api_options
        def run(
            query: str | None,
            ids: tuple[str, ...],
            dry_run: bool,
            wait: bool,
            request_id: str | None,
            rate: float | None,
            reason: str | None,
            labels: tuple[str, ...],
            state: str | None,
            revision: int | None,
            server: str,
            token: str | None,
            user: str | None,
        ) -> None:
            chosen = _ids(ids)
            if bool(query) == bool(chosen):
                raise click.UsageError("Choose the executions with --query or with --ids")
            body: dict[str, Any] = {"query": query} if query else {"ids": chosen}
            if dry_run:
                body["dryRun"] = True
            else:
                body["requestId"] = request_id or str(uuid.uuid4())
            if rate is not None:
                body["ratePerSecond"] = rate
            if reason:
                body["reason"] = reason
            if action == "labels":
                body["labels"] = _labels(labels)
            if action == "state":
                body["state"] = state
            if revision is not None and action == "replay":
                body["revision"] = revision
            api = Api(server, token, user)
            answer = api.call("POST", f"/api/v1/executions/bulk/{action}", json=body)
            if dry_run:
                click.echo(
                    f"Dry run: {answer['count']} executions would be chosen; "
                    f"{answer['wouldApply']} would {action}, {answer['wouldBeRefused']} would be "
                    f"refused, {len(answer['skipped'])} skipped. Nothing was changed."
                )
                for item in answer["sample"]:
                    line = f"  {item['id']} {item['namespace']}.{item['flowId']} {item['state']}"
                    click.echo(f"{line} -> {item['outcome']} {item.get('message', '')}".rstrip())
                for item in answer["skipped"]:
                    click.echo(f"  {item['id']} -> SKIPPED {item['message']}")
                return
            started = "started" if answer.get("created", True) else "already submitted"
            click.echo(f"Bulk job {answer['id']} {started}: {answer['total']} executions")
            if wait:
                job = _progress(api, answer)
                _print_job(job)
                if job["failed"]:
                    sys.exit(1)

    for action, text in (
        ("replay", "Replay the chosen executions (each a new execution)."),
        ("restart", "Restart the failed task runs of the chosen FAILED/KILLED executions."),
        ("kill", "Kill the chosen running executions."),
        ("delete", "Delete the chosen ended executions from the read models (events stay)."),
        ("labels", "Set labels (--label key:value) on the chosen executions."),
        ("state", "Change the state (--state) of the failed task run of the chosen executions."),
    ):
        action_command(action, text)

    @executions_group.command("job")
    @click.argument("job_id")
    @click.option("--wait", is_flag=True, help="Follow the job until it ends.")
    @_api_options
    def job(job_id: str, wait: bool, server: str, token: str | None, user: str | None) -> None:
        """Show bulk job JOB_ID: its progress, and once it ended, what failed."""
        api = Api(server, token, user)
        answer = api.call("GET", f"/api/v1/bulk/{job_id}")
        _print_job(_progress(api, answer) if wait else answer)

    def steer_command(command: str, text: str) -> None:
        @executions_group.command(command, help=text)
        @click.argument("job_id")
        @_api_options
        def steer(job_id: str, server: str, token: str | None, user: str | None) -> None:
            _print_job(Api(server, token, user).call("POST", f"/api/v1/bulk/{job_id}/{command}"))

    steer_command("pause", "Pause bulk job JOB_ID.")
    steer_command("resume", "Resume bulk job JOB_ID where it stopped.")
    steer_command("cancel", "Cancel bulk job JOB_ID (what is done stays done).")
