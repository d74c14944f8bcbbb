"""The plugin interface: what a task type is, and what it sees when it runs.

A task type is a msgspec struct derived from `RunnableTask` (run by a worker) or `FlowableTask`
(resolved by the executor, purely). Types are registered by their Kestra type name; packages
add theirs through the `tiercel.plugins` entry-point group, whose modules call `register` when
imported. Plugins see this module only, never the store or the database.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from engine.duration import parse_duration as parse_duration  # re-exported for plugins
from engine.triggers import Condition as Condition  # trigger types, re-exported for plugins
from engine.triggers import ConditionContext as ConditionContext
from engine.triggers import ScheduledTrigger as ScheduledTrigger
from engine.triggers import Trigger as Trigger
from engine.triggers import register_condition as register_condition
from engine.triggers import register_trigger as register_trigger
from engine.triggers import registered_conditions, registered_triggers

log = logging.getLogger(__name__)

# --- states ---------------------------------------------------------------------------------

EXECUTION_STATES = frozenset(
    {
        "CREATED",
        "QUEUED",
        "RUNNING",
        "PAUSED",
        "RESTARTED",
        "KILLING",
        "SUCCESS",
        "WARNING",
        "FAILED",
        "KILLED",
        "CANCELLED",
        "SKIPPED",
        "RETRYING",
        "RETRIED",
        "BREAKPOINT",
        "SUBMITTED",
        "RESUBMITTED",
    }
)
"""Kestra's execution states: a filter or search naming any other is a mistake."""
TERMINAL_STATES = frozenset({"SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED", "SKIPPED"})
FAILED_STATES = frozenset({"FAILED", "KILLED"})


class Task(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Properties every task has, whatever its type."""

    id: str
    """Unique identifier of the task within the flow."""
    type: str
    """The task type, e.g. `io.kestra.plugin.core.log.Log`."""
    description: str | None = None
    """Free text shown in the UI."""
    disabled: bool = False
    """When true the task is skipped as if it were not in the flow."""
    allowFailure: bool = False
    """A failure of this task ends it in WARNING and lets the flow go on."""
    allowWarning: bool = False
    """A WARNING of this task counts as SUCCESS."""
    timeout: str | None = None
    """Maximum duration of one attempt (ISO-8601, e.g. PT10M)."""
    retry: dict[str, Any] | None = None
    """Retry policy of the task (type, maxAttempt, interval, ...)."""
    runIf: str | None = None
    """Expression; the task is SKIPPED when it renders false."""
    logLevel: str | None = None
    """Minimum level of the task's logs that are kept."""
    workerGroup: dict[str, Any] | None = None
    """Worker group that must run the task (not supported: rejected at validation)."""
    logToFile: bool = False
    """Accepted for compatibility: logs are always kept in the event log."""

    def problems(self) -> list[tuple[str, str]]:
        """Checks beyond property types, as (field, message) pairs; none by default."""
        return []


class RunContext(Protocol):
    """What a runnable task sees while a worker runs it."""

    execution_id: str
    task_run_id: str
    task_id: str
    namespace: str
    flow_id: str
    attempt: int
    variables: dict[str, Any]
    working_dir: Path
    """A private, empty directory for this attempt, deleted when it ends."""

    def render(self, value: Any) -> Any:
        """Render templates inside `value` with the task's variables (on the event loop, within
        the limits of one render; `render_async` is preferred)."""
        ...

    async def render_async(self, value: Any) -> Any:
        """Render templates inside `value` with the task's variables, off the event loop, so
        that a slow template never holds up the worker's other attempts or its heartbeats."""
        ...

    def log(self, level: str, message: str) -> None:
        """Record one log line of the task run."""
        ...

    def metric(
        self, name: str, value: float, type: str = "counter", tags: dict[str, str] | None = None
    ) -> None:
        """Report a metric of the task run (`counter` or `timer`, in seconds)."""
        ...

    async def put_file(self, source: Path | bytes, name: str | None = None) -> str:
        """Store a file of this task run in internal storage; return its `kestra://` URI."""
        ...

    async def get_file(self, uri: str, target: Path | None = None) -> Path:
        """Copy the stored file at `uri` into the working directory (or `target`)."""
        ...

    async def kv_get(self, namespace: str, key: str) -> tuple[bool, Any]:
        """(found, value) of a key of a namespace's KV store; (False, None) when it is
        missing, deleted or expired."""
        ...

    async def kv_set(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        ttl: str | None = None,
        overwrite: bool = True,
        kv_type: str | None = None,
    ) -> None:
        """Set a key of a namespace's KV store (`ttl` as an ISO-8601 duration; `kv_type` the
        Kestra type the value is shown with, when the task says it)."""
        ...

    async def kv_delete(self, namespace: str, key: str) -> bool:
        """Delete a key; False when there was none."""
        ...

    async def kv_entries(self, namespace: str, prefix: str = "") -> dict[str, Any]:
        """The live keys of a namespace's KV store starting with `prefix`, with their values."""
        ...

    async def read_logs(
        self, execution_id: str, namespace: str | None = None, flow_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Every log line of an execution so far, in order: {namespace, flowId, executionId,
        taskId, taskRunId, attemptNumber, timestamp, level, message}. Fails with `TaskFailure`
        when the execution does not exist, or is not one of flow `namespace`.`flow_id` when
        those are given."""
        ...

    async def resume_execution(self, execution_id: str, inputs: dict[str, Any]) -> None:
        """Resume a paused execution with its Pause tasks' `onResume` values."""
        ...

    async def purge_executions(self, **filters: Any) -> dict[str, int]:
        """Purge ended executions matching `filters` (see `engine.purge.purge_executions`);
        the counts removed: executionsCount, logsCount, storagesCount, metricsCount."""
        ...

    async def purge_logs(self, **filters: Any) -> int:
        """Delete log lines matching `filters` (see `engine.purge.purge_logs`); how many."""
        ...

    async def purge_kv(self, **filters: Any) -> int:
        """Delete KV keys matching `filters` (see `engine.purge.purge_kv`); how many."""
        ...

    async def toggle_trigger(
        self, namespace: str, flow_id: str, trigger_id: str, enabled: bool
    ) -> None:
        """Enable or disable a trigger of a flow."""
        ...

    def process_group_started(self, pgid: int) -> None:
        """Note a process group the task started in a session of its own (out of reach of
        its worker's signals) and stops itself before it returns. Should the worker die
        first, the next worker started on this host kills the group before it runs anything,
        so the group never runs beside the retry of its attempt."""
        ...

    def process_group_ended(self, pgid: int) -> None:
        """The group noted with `process_group_started` is stopped: forget it."""
        ...


class RunnableTask(Task, kw_only=True):
    """A task that a worker runs; `run` returns the task's outputs."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        """Do the work; raise `TaskFailure` (or any exception) to fail the attempt."""
        raise NotImplementedError


class TaskFailure(Exception):
    """Raised by a task to fail its attempt with a message for the user."""

    def __init__(self, message: str, outputs: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.outputs = outputs or {}


class TaskWarning(Exception):
    """Raised by a task to end its attempt in WARNING with its outputs."""

    def __init__(self, message: str, outputs: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.outputs = outputs or {}


class Navigator(Protocol):
    """The executor's view offered to a flowable task while it is resolved.

    Every method is pure: it reads the execution's state and records what should happen next.
    A method returns the terminal state of what it drives, or None while it is still running.
    """

    now: dt.datetime
    """The time of the event being decided (never the wall clock)."""
    started: dt.datetime
    """When the task run being resolved was created."""

    def sequence(
        self, tasks: Sequence[Task], *, value: str | None = None, iteration: int | None = None
    ) -> str | None:
        """Run `tasks` one after the other, as children of the current task run (a new set of
        runs for each `iteration` of a repeating task)."""
        ...

    @property
    def own_outputs(self) -> dict[str, Any]:
        """The outputs of the task run being resolved, as recorded so far."""
        ...

    def parallel(
        self, tasks: Sequence[Task], *, limit: int = 0, value: str | None = None
    ) -> str | None:
        """Run `tasks` side by side, at most `limit` at once (0: no limit)."""
        ...

    def render(self, value: Any) -> Any:
        """Render a template with the execution's variables (typed when it is one expression)."""
        ...

    @property
    def value(self) -> str | None:
        """The loop value of the task run being resolved (None outside loops)."""
        ...

    def iterate(
        self,
        tasks: Sequence[Task],
        values: Sequence[str],
        *,
        limit: int = 0,
        concurrent_tasks: bool = False,
    ) -> str | None:
        """Run `tasks` once per value (at most `limit` values at once; 0: no limit), the tasks
        of one value in order, or side by side with `concurrent_tasks`."""
        ...

    def child_files(self) -> dict[str, str]:
        """The WorkingDirectory output files reported by the children of this task run."""
        ...

    def peek(self, task: Task, *, value: str | None = None) -> str | None:
        """The effective terminal state of a child task, or None (not created or running)."""
        ...

    def outputs(self, values: dict[str, Any], *, final: bool = False) -> None:
        """Set the outputs of the task run being resolved: at once (what runs next sees them),
        or with `final` together with the state the task returns."""
        ...

    def exit(self, state: str) -> None:
        """End the whole execution now in `state`, killing what still runs."""
        ...

    def set_labels(self, labels: dict[str, str]) -> None:
        """Add or replace labels of the execution."""
        ...

    def pause(self) -> bool:
        """Pause the execution at this task run; True once it has been resumed."""
        ...

    def subflow(
        self,
        namespace: str,
        flow_id: str,
        *,
        inputs: dict[str, Any],
        labels: dict[str, str],
        revision: int | None = None,
        wait: bool = True,
    ) -> dict[str, Any] | None:
        """Start a child execution; its result (executionId, state, outputs) once known."""
        ...

    def sleep_until(self, fire_at: dt.datetime, *, key: str = "wait") -> bool:
        """Ask to be woken at `fire_at` (one timer per `key`); True once that time has come."""
        ...


class FlowableTask(Task, kw_only=True):
    """A task whose children the executor drives; `resolve` must be pure."""

    def branches(self) -> dict[str, list[Task]]:
        """The task's child task lists by property name (for validation and lookups)."""
        return {}

    def resolve(self, nav: Navigator) -> str | None:
        """Advance the children through `nav`; return the terminal state, or None if running."""
        raise NotImplementedError


# --- registry --------------------------------------------------------------------------------

_types: dict[str, type[Task]] = {}
_canonical: dict[type[Task], str] = {}
_loaded = False

T = TypeVar("T", bound=type[Task])


def register(name: str, *aliases: str) -> Callable[[T], T]:
    """Class decorator: register a task type under its Kestra name and its older aliases."""

    def deco(cls: T) -> T:
        for n in (name, *aliases):
            _types[n] = cls
        _canonical[cls] = name
        return cls

    return deco


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in importlib.metadata.entry_points(group="tiercel.plugins"):
        try:
            entry.load()
        except Exception as exc:  # a broken third-party plugin must not stop the platform
            log.error("Plugin %s could not be loaded: %s", entry.value, exc)


def task_type(name: str) -> type[Task] | None:
    """The class registered for `name` (canonical or alias), or None."""
    _load()
    return _types.get(name)


def canonical_name(cls: type[Any]) -> str:
    """The Kestra type name a class (task, trigger or condition type) was registered with."""
    from engine import triggers

    return _canonical.get(cls) or triggers.canonical_name(cls) or cls.__name__


def plugin_type(name: str) -> type[msgspec.Struct] | None:
    """The task, trigger or condition type registered as `name`, or None."""
    found: type[msgspec.Struct] | None = task_type(name)
    return found or registered_triggers().get(name) or registered_conditions().get(name)


def property_docs(cls: type) -> dict[str, str]:
    """The docstrings written under each property of a task class (and its bases)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not issubclass(klass, msgspec.Struct):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def describe(cls: type[Any]) -> dict[str, Any]:
    """A plugin type for listings: its name, aliases, kind (runnable, flowable, trigger,
    condition) and description."""
    name = canonical_name(cls)
    names: dict[str, type[Any]] = {**registered(), **registered_triggers()}
    names.update(registered_conditions())
    if issubclass(cls, Trigger):
        kind = "trigger"
    elif issubclass(cls, Condition):
        kind = "condition"
    else:
        kind = "flowable" if issubclass(cls, FlowableTask) else "runnable"
    return {
        "type": name,
        "aliases": sorted(n for n, c in names.items() if c is cls and n != name),
        "kind": kind,
        "description": inspect_doc(cls),
    }


def plugin_list() -> list[dict[str, Any]]:
    """Every installed task, trigger and condition type once (aliases listed under it),
    sorted by name."""
    everything: list[type[Any]] = [
        *registered().values(),
        *registered_triggers().values(),
        *registered_conditions().values(),
    ]
    classes = {id(cls): cls for cls in everything}
    return sorted((describe(cls) for cls in classes.values()), key=lambda d: d["type"])


def inspect_doc(cls: type) -> str:
    """The class docstring, cleaned."""
    import inspect

    return inspect.cleandoc(cls.__doc__ or "")


def schema(cls: type[Any]) -> dict[str, Any]:
    """The JSON schema of a task, trigger or condition type, with each property's
    description."""
    generated: dict[str, Any] = msgspec.json.schema(cls)
    docs = property_docs(cls)
    definitions = generated.get("$defs", {})
    target = definitions.get(cls.__name__, generated)
    for field in msgspec.structs.fields(cls):
        prop = target.get("properties", {}).get(field.encode_name)
        if isinstance(prop, dict) and field.name in docs:
            prop["description"] = docs[field.name]
    target["description"] = inspect_doc(cls)
    target["title"] = canonical_name(cls)
    return generated


def registered() -> dict[str, type[Task]]:
    """Every registered name (aliases included) and its class."""
    _load()
    return dict(_types)
