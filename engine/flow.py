"""Flows: YAML source -> typed structs, with every problem reported at its line and field.

Parsing keeps the position of every YAML node, so a problem found anywhere (a wrong property
type deep in a task, an unknown task type, a duplicate id) is reported as `line:column path`.
Validation collects all problems before failing.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from typing import Any

import msgspec

from engine import patterns
from engine.duration import parse_duration
from engine.errors import FlowValidationError, Problem
from engine.inputs import CHOICE_TYPES, bound, choices, convert, dependency_order, is_templated
from engine.plugin import FlowableTask, Task, task_type
from engine.safe_yaml import load_with_marks
from engine.triggers import PendingTrigger, Trigger, parse_trigger

INPUT_TYPES = frozenset(
    {
        "STRING",
        "ENUM",
        "SELECT",
        "MULTISELECT",
        "INT",
        "FLOAT",
        "BOOLEAN",
        "BOOL",
        "DATETIME",
        "DATE",
        "TIME",
        "DURATION",
        "FILE",
        "JSON",
        "YAML",
        "URI",
        "SECRET",
        "ARRAY",
        "EMAIL",
    }
)


class IdRule(msgspec.Struct, frozen=True):
    """What an id of one kind may be: Kestra's pattern, and a maximum length."""

    what: str
    """The kind of id, as a message names it (`Flow id`, `Namespace`)."""
    pattern: str
    allowed: str
    """The pattern in words."""
    max_length: int

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` as an id of this kind, or None when it is a good one."""
        if not isinstance(value, str) or not value:
            return f"{self.what} must be a non-empty string of {self.allowed}, not {_kind(value)}"
        if len(value) > self.max_length:
            return (
                f"{self.what} '{value[:40]}...' is {len(value)} characters long: at most "
                f"{self.max_length} are allowed"
            )
        if not re.fullmatch(self.pattern, value):
            return f"{self.what} {value!r} may only hold {self.allowed}"
        return None


# Kestra's patterns (AbstractFlow, Task, AbstractTrigger, Input, Output) and its maximum lengths
# for flow ids (100) and namespaces (150). Kestra sets none for the others; Tiercel bounds them
# too, as they name folders of the internal storage and parts of URLs.
FLOW_ID = IdRule(
    "Flow id",
    r"[a-zA-Z0-9][a-zA-Z0-9._-]*",
    "letters, digits, . _ - (starting with a letter or digit)",
    100,
)
NAMESPACE = IdRule(
    "Namespace",
    r"[a-z0-9][a-z0-9._-]*",
    "lower-case letters, digits, . _ - (starting with a letter or digit)",
    150,
)
TASK_ID = IdRule(
    "Task id",
    r"[a-zA-Z0-9][a-zA-Z0-9_-]*",
    "letters, digits, _ - (starting with a letter or digit; no dots)",
    100,
)
TRIGGER_ID = IdRule("Trigger id", TASK_ID.pattern, TASK_ID.allowed, 100)
INPUT_ID = IdRule(
    "Input id",
    r"[a-zA-Z0-9][a-zA-Z0-9._-]*",
    "letters, digits, . _ - (starting with a letter or digit)",
    100,
)
OUTPUT_ID = IdRule("Output id", INPUT_ID.pattern, INPUT_ID.allowed, 100)


class DependsOn(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """The inputs an input waits for, and when it applies."""

    inputs: list[str] = []
    """Ids of the inputs resolved before this one."""
    condition: str | None = None
    """An expression over `inputs`: when it renders false, the input is skipped (null)."""


class Input(msgspec.Struct, kw_only=True, omit_defaults=True, rename={"id_": "id"}):
    """A flow input: its id, type and how its value is validated (see engine/inputs.py)."""

    id_: str
    """Letters, digits, `.`, `_`, `-`; dots nest the value (`inputs.a.b`)."""
    type: str = "STRING"
    """One of INPUT_TYPES."""
    description: str | None = None
    displayName: str | None = None
    """The label shown instead of the id."""
    required: bool = True
    """Whether a value (or `defaults`) is needed to start an execution."""
    defaults: Any = None
    """The value used when none is given."""
    prefill: Any = None
    """A value shown to the person starting the execution, which they may clear: unlike
    `defaults` it is never used when the input is left empty."""
    validator: str | None = None
    """STRING, SECRET: a regular expression the whole value must match."""
    min: Any = None
    """INT, FLOAT: the smallest number allowed; DURATION: the shortest duration."""
    max: Any = None
    """INT, FLOAT: the largest number allowed; DURATION: the longest duration."""
    after: Any = None
    """DATETIME, DATE, TIME: the value must be later than this."""
    before: Any = None
    """DATETIME, DATE, TIME: the value must be earlier than this."""
    values: list[Any] | None = None
    """SELECT, ENUM, MULTISELECT: the values offered."""
    options: list[Any] | None = None
    """MULTISELECT: the old name of `values`."""
    expression: str | None = None
    """SELECT, MULTISELECT: an expression computing the values (not evaluated: any value is
    then accepted)."""
    allowCustomValue: bool = False
    """SELECT, MULTISELECT: accept values that are not among `values`."""
    itemType: str | None = None
    """ARRAY (required), MULTISELECT: the type of each item."""
    dependsOn: DependsOn | None = None
    """Inputs resolved before this one, and the condition under which it applies."""
    extension: str | None = None
    """FILE: the extension of the stored file."""


class Output(msgspec.Struct, kw_only=True, omit_defaults=True, rename={"id_": "id"}):
    """A flow output, rendered when the execution ends."""

    id_: str
    value: Any
    type: str = "STRING"
    description: str | None = None
    required: bool = True
    displayName: str | None = None


class Flow(msgspec.Struct, kw_only=True, omit_defaults=True, dict=True):
    """A parsed, validated flow.

    `dict=True` gives each instance a `__dict__` for what is derived from it and never encoded
    (the task index of `find_task`); copies and `msgspec.structs.replace` start without it.
    """

    id: str
    namespace: str
    tasks: list[Task]
    revision: int | None = None
    description: str | None = None
    labels: dict[str, str] = {}
    inputs: list[Input] = []
    variables: dict[str, Any] = {}
    errors: list[Task] = []
    finally_: list[Task] = msgspec.field(default_factory=list, name="finally")
    afterExecution: list[Task] = []
    outputs: list[Output] = []
    triggers: list[Trigger] = []
    pluginDefaults: list[dict[str, Any]] = []
    disabled: bool = False
    retry: dict[str, Any] | None = None
    concurrency: dict[str, Any] | None = None
    sla: list[dict[str, Any]] = []
    listeners: list[dict[str, Any]] = []
    taskDefaults: list[dict[str, Any]] = []
    deleted: bool = False

    def all_tasks(self) -> Iterator[Task]:
        """Every task of the flow, depth first, in every branch."""
        for branch in (self.tasks, self.errors, self.finally_, self.afterExecution):
            yield from walk(branch)

    def find_task(self, task_id: str) -> Task | None:
        """The task with id `task_id`, wherever it is."""
        # Built on first use and kept on this very instance: an index keyed by anything else
        # (such as `id(flow)`, which a later flow reuses once this one is collected) could
        # answer with another flow's task.
        index: dict[str, Task] | None = self.__dict__.get("_task_index")
        if index is None:
            index = {t.id: t for t in self.all_tasks()}
            self.__dict__["_task_index"] = index
        return index.get(task_id)


_FLOW_FIELDS = {f.encode_name for f in msgspec.structs.fields(Flow)}
_INPUT_FIELDS = {f.encode_name for f in msgspec.structs.fields(Input)} | {"name"}


def walk(tasks: list[Task]) -> Iterator[Task]:
    """Tasks and their children, depth first."""
    for task in tasks:
        yield task
        if isinstance(task, FlowableTask):
            for children in task.branches().values():
                yield from walk(children)


# --- YAML with positions -----------------------------------------------------------------------


def load_yaml(source: str) -> tuple[Any, dict[str, tuple[int, int]], list[Problem]]:
    """Parse YAML keeping each node's (line, column) by field path; syntax errors, documents
    beyond the YAML limits (engine/safe_yaml.py) and values that cannot be stored are
    problems."""
    return load_with_marks(source)


# --- validation --------------------------------------------------------------------------------


class _Checker:
    def __init__(self, marks: dict[str, tuple[int, int]], *, recorded: bool = False) -> None:
        self.marks = marks
        self.recorded = recorded
        """Whether the flow was accepted before (recorded in an event): it is read as recorded,
        so that its history keeps the meaning it had. Rules added since (retry policies, any
        semantic check) do not reject it; only a task that can no longer be read does."""
        self.dropped = 0
        """Tasks that could not be read at all (a recorded flow is unusable without them)."""
        self.problems: list[Problem] = []
        self.task_ids: dict[str, str] = {}
        self.defaults: list[dict[str, Any]] = []
        """The flow's `pluginDefaults`: values given to every task of a type."""
        self.warnings: list[Problem] = []
        """Properties accepted but not honoured (yet): the flow is valid, the user is told."""

    def add(self, path: str, message: str) -> None:
        line, col = self._locate(path)
        self.problems.append(Problem(message, path, line, col))

    def warn(self, path: str, message: str) -> None:
        if self.recorded:
            return  # a recorded flow was warned about when it was saved
        line, col = self._locate(path)
        self.warnings.append(Problem(message, path, line, col))

    def _locate(self, path: str) -> tuple[int | None, int | None]:
        while path:
            if path in self.marks:
                return self.marks[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.marks.get("", (None, None))

    def tasks(self, raw: Any, path: str, *, required: bool) -> list[Task]:
        if raw is None:
            if required:
                self.add(path, "At least one task is required: add a `tasks:` list")
            return []
        if not isinstance(raw, list):
            self.add(path, f"Must be a list of tasks, not {_kind(raw)}")
            return []
        if required and not raw:
            self.add(path, "At least one task is required: the list is empty")
        out = []
        for i, item in enumerate(raw):
            task = self.task(item, f"{path}[{i}]")
            if task is None:
                self.dropped += 1
            else:
                out.append(task)
        return out

    def task(self, raw: Any, path: str) -> Task | None:
        if not isinstance(raw, dict):
            self.add(path, f"A task must be a mapping with `id` and `type`, not {_kind(raw)}")
            return None
        ok = True
        task_id = raw.get("id")
        if task_id is None:
            self.add(f"{path}.id", "Every task needs an `id` (a non-empty string)")
            ok = False
        elif (wrong := TASK_ID.problem(task_id)) is not None:
            self.add(f"{path}.id", wrong)
            ok = False
        elif task_id in self.task_ids:
            self.add(
                f"{path}.id",
                f"Duplicate task id '{task_id}' (also at {self.task_ids[task_id]}): "
                "task ids must be unique in a flow",
            )
            ok = False
        else:
            self.task_ids[task_id] = path
        type_name = raw.get("type")
        if isinstance(type_name, str) and self.defaults:
            raw = _with_defaults(raw, type_name, self.defaults)
        cls = task_type(type_name) if isinstance(type_name, str) else None
        if not isinstance(type_name, str):
            self.add(
                f"{path}.type", "Every task needs a `type`, e.g. io.kestra.plugin.core.log.Log"
            )
            return None
        if cls is None:
            self.add(
                f"{path}.type",
                f"Unknown task type '{type_name}': check the spelling, or list the installed "
                "types with `tiercel plugins list`",
            )
            return None
        if raw.get("workerGroup") is not None:
            self.add(
                f"{path}.workerGroup",
                "Worker groups are not supported: remove `workerGroup` (every worker runs "
                "every task type)",
            )
            ok = False
        # Child task lists are validated (and converted) one by one so every problem is found.
        child_fields = getattr(cls, "__child_fields__", ())
        plain = {k: v for k, v in raw.items() if k not in child_fields}
        children: dict[str, Any] = {}
        for name in child_fields:
            if name in raw:
                required = name in getattr(cls, "__required_children__", ())
                children[name] = self.tasks(raw[name], f"{path}.{name}", required=required)
            elif name in getattr(cls, "__required_children__", ()):
                self.add(f"{path}.{name}", f"`{name}` is required for {type_name}")
                ok = False
        nested = {
            k: self.nested(v, f"{path}.{k}", _container(cls, k))
            for k, v in raw.items()
            if k in _nested_fields(cls)
        }
        for k in nested:
            plain.pop(k, None)
        try:
            task = msgspec.convert(plain, cls)
        except msgspec.ValidationError as exc:
            self.add_msgspec(path, exc, type_name)
            return None
        if children or nested:
            # Child lists are set by attribute name (`else` is stored as `else_`).
            names = {f.encode_name: f.name for f in msgspec.structs.fields(cls)}
            task = msgspec.structs.replace(
                task, **{names.get(k, k): v for k, v in {**children, **nested}.items()}
            )
        retry = task.retry
        if isinstance(retry, dict) and not self.recorded:
            ok = _check_retry(retry, f"{path}.retry", self) and ok
        for field, message in task.problems():
            self.add(f"{path}.{field}" if field else path, message)
            ok = False
        for field, message in _ignored_task_properties(raw):
            self.warn(f"{path}.{field}", message)
        return task if ok or self.recorded else None

    def nested(self, raw: Any, path: str, expected: type) -> Any:
        """Maps of task lists (Switch `cases`) and lists of `{task, dependsOn}` (Dag `tasks`),
        checked here as `expected` (dict or list) has them, since they hold tasks."""
        if raw is None:
            return expected()
        if expected is dict:
            if not isinstance(raw, dict):
                self.add(path, f"Must be a mapping of names to task lists, not {_kind(raw)}")
                return {}
            return {k: self.tasks(v, f"{path}.{k}", required=False) for k, v in raw.items()}
        if not isinstance(raw, list):
            self.add(path, f"Must be a list of {{task, dependsOn}} items, not {_kind(raw)}")
            return []
        out = []
        for i, item in enumerate(raw):
            where = f"{path}[{i}]"
            if not isinstance(item, dict) or "task" not in item:
                self.add(where, "Each item must be a mapping with a `task` (and `dependsOn`)")
                continue
            depends = item.get("dependsOn")
            if depends is not None and (
                not isinstance(depends, list) or not all(isinstance(d, str) for d in depends)
            ):
                self.add(f"{where}.dependsOn", "`dependsOn` must be a list of task ids")
                item = {**item, "dependsOn": []}
            task = self.task(item["task"], f"{where}.task")
            if task is None:
                self.dropped += 1
            out.append({**item, "task": task})
        return out

    def add_msgspec(self, path: str, exc: msgspec.ValidationError, type_name: str) -> None:
        text = str(exc)
        m = re.search(r" - at `\$(.*)`$", text)
        where = path
        if m:
            where = path + m.group(1).replace("['", ".").replace("']", "")
            text = text[: m.start()]
        unknown = re.match(r"Object contains unknown field `(.+)`", text)
        if unknown:
            where = f"{where}.{unknown.group(1)}"
            text = f"Unknown property `{unknown.group(1)}` for {type_name}: remove it or fix it"
        missing = re.match(r"Object missing required field `(.+)`", text)
        if missing:
            where = f"{where}.{missing.group(1)}"
            text = f"Property `{missing.group(1)}` is required for {type_name}"
        self.add(where, text)


def _check_defaults(raw: Any, c: _Checker) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        c.add("pluginDefaults", "pluginDefaults must be a list of {type, values, forced}")
        return []
    out = []
    for i, item in enumerate(raw):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("type"), str)
            or not isinstance(item.get("values", {}), dict)
        ):
            c.add(
                f"pluginDefaults[{i}]",
                "Each plugin default needs a `type` (a task type or a package of types) and "
                "`values` (a mapping of properties)",
            )
            continue
        out.append(item)
    return out


def _with_defaults(
    raw: dict[str, Any], type_name: str, defaults: list[dict[str, Any]]
) -> dict[str, Any]:
    """A task's properties with the flow's plugin defaults for its type merged in (the task's
    own values win unless the default is `forced`)."""
    merged = dict(raw)
    for default in defaults:
        prefix = default["type"]
        if type_name != prefix and not type_name.startswith(prefix.rstrip(".") + "."):
            continue
        forced = bool(default.get("forced"))
        for key, value in (default.get("values") or {}).items():
            if key in ("id", "type"):
                continue
            if key not in merged or forced:
                merged[key] = value
            elif isinstance(merged[key], dict) and isinstance(value, dict):
                merged[key] = {**value, **merged[key]} if not forced else {**merged[key], **value}
    return merged


def _nested_fields(cls: type[Task]) -> tuple[str, ...]:
    return getattr(cls, "__nested_fields__", ())


def _container(cls: type[Task], name: str) -> type:
    """dict or list: what the task type's field `name` holds."""
    for field in msgspec.structs.fields(cls):
        if field.encode_name == name:
            origin = typing.get_origin(field.type) or field.type
            return dict if origin is dict else list
    return list


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def parse_flow(
    source: str, *, origin: str | None = None, warnings: list[Problem] | None = None
) -> Flow:
    """Parse and validate a flow's YAML; raise `FlowValidationError` listing every problem.

    `warnings`, when given, receives the properties the flow uses that Tiercel accepts but does
    not honour yet (an SLA, a Docker task runner, ...), each at its line: the flow is valid, and
    nothing it asks for is silently ignored."""
    raw, marks, problems = load_yaml(source)
    checker = _Checker(marks)
    checker.problems.extend(problems)
    if problems and raw is None:
        raise FlowValidationError(checker.problems, origin)
    flow = _check_flow(raw, checker)
    if checker.problems or flow is None:
        raise FlowValidationError(checker.problems, origin)
    if warnings is not None:
        warnings.extend(sorted(checker.warnings, key=lambda w: (w.line or 0, w.column or 0)))
    return flow


PROCESS_RUNNERS = frozenset(
    {
        "io.kestra.plugin.core.runner.Process",
        "io.kestra.core.models.tasks.runners.types.ProcessTaskRunner",
    }
)
"""Task runner types that are what Tiercel does anyway: run the process on the worker."""


def _ignored_task_properties(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """The properties of a task (as written, with its plugin defaults) that its type accepts
    for compatibility but that change nothing here, as (field, message) pairs."""
    found: list[tuple[str, str]] = []
    runner = raw.get("taskRunner")
    runner_type = runner.get("type") if isinstance(runner, dict) else None
    on_process = runner_type in PROCESS_RUNNERS or str(raw.get("runner", "")).upper() == "PROCESS"
    if runner_type is not None and not on_process:
        found.append(
            (
                "taskRunner",
                f"Task runner {runner_type} is not supported: the task runs as a process on the "
                "worker (use io.kestra.plugin.core.runner.Process to say so)",
            )
        )
    if raw.get("containerImage") and not on_process:
        found.append(
            (
                "containerImage",
                f"The container image {raw['containerImage']} is not used: the task runs as a "
                "process on the worker, with the worker's own programs",
            )
        )
    for field in ("docker", "dockerOptions"):
        if raw.get(field) and not on_process:
            found.append(
                (field, f"`{field}` is not used: the task runs as a process on the worker")
            )
    if str(raw.get("runner", "")).upper() == "DOCKER":
        found.append(("runner", "runner DOCKER is not supported: the task runs as a process"))
    files = raw.get("namespaceFiles")
    if isinstance(files, dict) and files.get("enabled", True) is not False:
        found.append(
            (
                "namespaceFiles",
                "Namespace files are not copied into the working directory yet: give the "
                "files as `inputFiles`",
            )
        )
    if str(raw.get("targetOS", "")).upper() == "WINDOWS":
        found.append(
            ("targetOS", "targetOS WINDOWS is not supported: commands run in a POSIX shell")
        )
    if raw.get("cache"):
        found.append(("cache", "The working directory cache is not kept: it is rebuilt every time"))
    if raw.get("scheduleDate"):
        found.append(
            ("scheduleDate", "`scheduleDate` is not honoured: the subflow execution starts at once")
        )
    if raw.get("encryptBody") is True:
        found.append(("encryptBody", "`encryptBody` is not honoured: the body is kept as is"))
    return found


def _ignored_flow_properties(raw: dict[str, Any], c: _Checker) -> None:
    """Warn about the flow-level properties that are accepted but do nothing yet (and check
    the concurrency limit, which used to be one of them)."""
    if raw.get("sla"):
        c.warn("sla", "Flow SLAs are not checked yet: no SLA violation is raised or recorded")
    if not c.recorded:
        # Imported here: the `engine.execution` package reads flows with this module.
        from engine.execution.concurrency import limit_problems

        for where, message in limit_problems(raw.get("concurrency")):
            c.add(where, message)
    if raw.get("listeners"):
        c.warn(
            "listeners",
            "Listeners are not run (Kestra deprecated them): use `afterExecution` or `errors`",
        )


def flow_from_dict(raw: dict[str, Any]) -> Flow:
    """Read a flow recorded in an event, as it was recorded: checks that this version added
    since do not reject it; `FlowValidationError` only when it can no longer be read (a task
    type that is gone, a property that no longer converts)."""
    checker = _Checker({}, recorded=True)
    flow = _check_flow(raw, checker)
    if flow is None or checker.dropped:
        raise FlowValidationError(checker.problems)
    return flow


def _check_flow(raw: Any, c: _Checker) -> Flow | None:
    if not isinstance(raw, dict):
        c.add("", f"A flow must be a YAML mapping with id, namespace and tasks, not {_kind(raw)}")
        return None
    for key in raw:
        if key not in _FLOW_FIELDS:
            c.add(str(key), f"Unknown flow property `{key}`: remove it or fix its name")
    flow_id, namespace = raw.get("id"), raw.get("namespace")
    if flow_id is None or flow_id == "":
        c.add("id", "The flow needs an `id` (letters, digits, . _ -)")
    elif (wrong := FLOW_ID.problem(flow_id)) is not None:
        c.add("id", wrong)
    if namespace is None or namespace == "":
        c.add("namespace", "The flow needs a `namespace`, e.g. company.team")
    elif (wrong := NAMESPACE.problem(namespace)) is not None:
        c.add("namespace", wrong)
    c.defaults = _check_defaults(raw.get("pluginDefaults") or raw.get("taskDefaults"), c)
    tasks = c.tasks(raw.get("tasks"), "tasks", required=True)
    branches = {
        name: c.tasks(raw.get(name), name, required=False)
        for name in ("errors", "finally", "afterExecution")
    }
    inputs = _check_inputs(raw.get("inputs"), c)
    labels = _check_labels(raw.get("labels"), c)
    _ignored_flow_properties(raw, c)
    if isinstance(raw.get("retry"), dict) and not c.recorded:
        _check_retry(raw["retry"], "retry", c)
    listeners = raw.get("listeners")
    for i, listener in enumerate(listeners if isinstance(listeners, list) else []):
        if isinstance(listener, dict):
            c.tasks(listener.get("tasks"), f"listeners[{i}].tasks", required=True)
    _check_ids(raw.get("triggers"), "triggers", TRIGGER_ID, c)
    triggers = _check_triggers(raw.get("triggers"), c)
    _check_ids(raw.get("outputs"), "outputs", OUTPUT_ID, c)
    rest = {
        k: v
        for k, v in raw.items()
        if k in _FLOW_FIELDS
        and k
        not in ("tasks", "errors", "finally", "afterExecution", "inputs", "labels", "triggers")
    }
    rest.update(
        id=flow_id if isinstance(flow_id, str) else "",
        namespace=namespace if isinstance(namespace, str) else "",
    )
    rest["tasks"] = []
    try:
        flow = msgspec.convert(rest, Flow)
    except msgspec.ValidationError as exc:
        c.add_msgspec("", exc, "the flow")
        return None
    for task in walk([*tasks, *branches["errors"], *branches["finally"]]):
        if (
            getattr(task, "flowId", None) == flow_id
            and getattr(task, "namespace", None) == namespace
        ):
            c.add(
                c.task_ids.get(task.id, task.id),
                f"Task '{task.id}' runs its own flow {namespace}.{flow_id}: a flow cannot call "
                "itself as a subflow",
            )
    return msgspec.structs.replace(
        flow,
        tasks=tasks,
        errors=branches["errors"],
        finally_=branches["finally"],
        afterExecution=branches["afterExecution"],
        inputs=inputs,
        labels=labels,
        triggers=triggers,
    )


def _check_triggers(raw: Any, c: _Checker) -> list[Trigger]:
    """The flow's `triggers:` as typed structs: an unknown type or property is a problem at its
    line. A recorded flow keeps the triggers it can still read and drops the others silently:
    an execution never needs them, and its history must stay readable."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        if not c.recorded:
            c.add("triggers", f"`triggers` must be a list of triggers, not {_kind(raw)}")
        return []
    out: list[Trigger] = []
    found: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        path = f"triggers[{i}]"
        found.clear()
        trigger, pending = parse_trigger(item, path, lambda where, msg: found.append((where, msg)))
        if c.recorded:
            if trigger is not None:
                out.append(trigger)
            continue
        for where, message in found:
            if where != f"{path}.id":  # ids are checked (once) by _check_ids
                c.add(where, message)
        if trigger is None:
            continue
        if pending:
            c.warn(
                path,
                f"Trigger '{trigger.id}' ({trigger.type}) is kept but does not start executions "
                "yet: start them through the API or the CLI",
            )
        out.append(trigger)
    return out


def _check_ids(raw: Any, name: str, rule: IdRule, c: _Checker) -> None:
    """The ids of the triggers or outputs: present, well formed and unique (the rest of each
    item is checked by its conversion)."""
    if not isinstance(raw, list) or c.recorded:
        return
    seen: dict[str, str] = {}
    for i, item in enumerate(raw):
        path = f"{name}[{i}]"
        if not isinstance(item, dict):
            continue
        item_id = item.get("id")
        if item_id is None:
            c.add(path, f"Every item of `{name}` needs an `id`")
        elif (wrong := rule.problem(item_id)) is not None:
            c.add(f"{path}.id", wrong)
        elif item_id in seen:
            c.add(
                f"{path}.id",
                f"Duplicate {rule.what.lower()} '{item_id}' (also at {seen[item_id]}): ids must "
                "be unique",
            )
        else:
            seen[item_id] = path


RETRY_TYPES: dict[str, frozenset[str]] = {
    "constant": frozenset({"interval"}),
    "exponential": frozenset({"interval", "maxInterval", "delayFactor"}),
    "random": frozenset({"minInterval", "maxInterval"}),
}
"""Kestra's retry types, with the properties that only some of them have."""
_RETRY_COMMON = frozenset(
    {"type", "maxAttempt", "maxAttempts", "maxDuration", "warningOnRetry", "behavior"}
)
RETRY_BEHAVIORS = ("RETRY_FAILED_TASK", "CREATE_NEW_EXECUTION")
_RETRY_DURATIONS = ("interval", "minInterval", "maxInterval", "maxDuration")


def _check_retry(raw: dict[str, Any], path: str, c: _Checker) -> bool:
    """Check a retry policy (a task's or the flow's) as the executor will read it, so that a bad
    value fails when the flow is saved instead of when a task fails. Values holding an
    expression are left to run time. Whether no problem was found."""
    before = len(c.problems)
    kind = raw.get("type")
    specific: frozenset[str] = frozenset()
    types = ", ".join(RETRY_TYPES)
    if kind is None:
        c.add(path, f"A retry policy needs a `type`: one of {types}")
    elif not isinstance(kind, str) or kind.lower() not in RETRY_TYPES:
        c.add(f"{path}.type", f"Unknown retry type {kind!r}: use one of {types}")
    else:
        specific = RETRY_TYPES[kind.lower()]
    every = set().union(*RETRY_TYPES.values())
    for key in raw:
        if key in _RETRY_COMMON or key in specific:
            continue
        if key in every:
            if kind is not None and specific:
                used_by = sorted(t for t, keys in RETRY_TYPES.items() if key in keys)
                c.add(
                    f"{path}.{key}",
                    f"Retry property `{key}` does not apply to type {kind} (only to "
                    f"{', '.join(used_by)}): remove it",
                )
        else:
            known = ", ".join(sorted(_RETRY_COMMON | every))
            c.add(f"{path}.{key}", f"Unknown retry property `{key}`: use one of {known}")
    durations = {}
    for key in _RETRY_DURATIONS:
        value = raw.get(key)
        if value is None or _templated(value):
            continue
        if not isinstance(value, str):
            c.add(
                f"{path}.{key}",
                f"`{key}` must be an ISO-8601 duration such as PT30S, PT5M or P1D, not {value!r}",
            )
            continue
        try:
            durations[key] = parse_duration(value)
        except ValueError as exc:
            c.add(f"{path}.{key}", f"`{key}`: {exc}")
    for key in ("maxAttempt", "maxAttempts"):
        value = raw.get(key)
        if value is None or _templated(value):
            continue
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str) and value.strip().isdigit():
            number = int(value)
        if number is None or number < 1:
            c.add(
                f"{path}.{key}",
                f"`{key}` must be a whole number of attempts, at least 1 (e.g. 3), not {value!r}",
            )
    factor = raw.get("delayFactor")
    if factor is not None and not _templated(factor):
        try:
            if isinstance(factor, bool) or float(factor) <= 0:
                raise ValueError
        except (TypeError, ValueError):
            c.add(
                f"{path}.delayFactor",
                f"`delayFactor` must be a positive number (e.g. 2: each wait doubles), "
                f"not {factor!r}",
            )
    behavior = raw.get("behavior")
    if behavior is not None and not _templated(behavior):
        if not isinstance(behavior, str) or behavior.upper() not in RETRY_BEHAVIORS:
            c.add(
                f"{path}.behavior",
                f"Unknown retry behavior {behavior!r}: use {' or '.join(RETRY_BEHAVIORS)}",
            )
    warning = raw.get("warningOnRetry")
    if warning is not None and not isinstance(warning, bool):
        c.add(f"{path}.warningOnRetry", f"`warningOnRetry` must be true or false, not {warning!r}")
    low, high = durations.get("minInterval"), durations.get("maxInterval")
    if low is not None and high is not None and low > high:
        c.add(f"{path}.minInterval", "`minInterval` is longer than `maxInterval`: swap them")
    return len(c.problems) == before


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


SETTABLE_SYSTEM_LABELS = frozenset({"system.readOnly"})


def _check_labels(raw: Any, c: _Checker) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, list):  # [{key, value}] as Kestra's API writes them
        pairs = {}
        for i, item in enumerate(raw):
            if isinstance(item, dict) and "key" in item and "value" in item:
                pairs[str(item["key"])] = str(item["value"])
            else:
                c.add(f"labels[{i}]", "A label in a list must be a mapping with key and value")
        raw = pairs
    if not isinstance(raw, dict):
        c.add("labels", "Labels must be a mapping of key: value")
        return {}
    labels = {}
    for key, value in raw.items():
        if str(key).startswith("system.") and key not in SETTABLE_SYSTEM_LABELS:
            c.add(
                f"labels.{key}",
                f"Label '{key}' uses the reserved prefix `system.`; a flow may only set "
                + ", ".join(sorted(SETTABLE_SYSTEM_LABELS)),
            )
        labels[str(key)] = _label_value(value)
    return labels


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


_INPUT_COMMON = frozenset(
    {
        "id", "name", "type", "description", "displayName", "required", "defaults", "prefill",
        "dependsOn",
    }
)  # fmt: skip
_INPUT_SPECIFIC: dict[str, frozenset[str]] = {
    "STRING": frozenset({"validator"}),
    "SECRET": frozenset({"validator"}),
    "INT": frozenset({"min", "max"}),
    "FLOAT": frozenset({"min", "max"}),
    "DURATION": frozenset({"min", "max"}),
    "DATETIME": frozenset({"after", "before"}),
    "DATE": frozenset({"after", "before"}),
    "TIME": frozenset({"after", "before"}),
    "SELECT": frozenset({"values", "expression", "allowCustomValue"}),
    "ENUM": frozenset({"values"}),
    "MULTISELECT": frozenset({"values", "options", "expression", "allowCustomValue", "itemType"}),
    "ARRAY": frozenset({"itemType"}),
    "FILE": frozenset({"extension"}),
}
_NOT_ITEM_TYPES = frozenset({"ARRAY", "MULTISELECT", "FILE", "SELECT", "ENUM"})


def _check_inputs(raw: Any, c: _Checker) -> list[Input]:
    """The flow's input definitions; every wrong one is a problem at its line."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        c.add("inputs", f"Inputs must be a list of {{id, type, ...}}, not {_kind(raw)}")
        return []
    inputs: list[Input] = []
    paths: dict[str, str] = {}
    for i, item in enumerate(raw):
        path = f"inputs[{i}]"
        if not isinstance(item, dict):
            c.add(
                path, f"An input must be a mapping with at least `id` and `type`, not {_kind(item)}"
            )
            continue
        item = dict(item)
        if "id" not in item and "name" in item:  # Kestra's older spelling
            item["id"] = item.pop("name")
        ok = True
        input_id = item.get("id")
        if input_id is None:
            c.add(path, "Every input needs an `id` (letters, digits, . _ -)")
            ok = False
        elif (wrong := INPUT_ID.problem(input_id)) is not None:
            c.add(f"{path}.id", wrong)
            ok = False
        elif input_id in paths:
            c.add(
                f"{path}.id",
                f"Duplicate input id '{input_id}' (also at {paths[input_id]}): input ids must "
                "be unique",
            )
            ok = False
        else:
            paths[input_id] = path
        name = input_id if isinstance(input_id, str) else f"#{i + 1}"
        kind = item.get("type")
        if kind is None:
            c.add(f"{path}.type", f"Input '{name}' needs a `type`, e.g. STRING or INT")
            ok = False
        elif not isinstance(kind, str) or kind not in INPUT_TYPES:
            hint = (
                f"write it in capitals: {kind.upper()}"
                if isinstance(kind, str) and kind.upper() in INPUT_TYPES
                else "use one of " + ", ".join(sorted(INPUT_TYPES))
            )
            shown = repr(kind) if isinstance(kind, str) else _kind(kind)
            c.add(f"{path}.type", f"Unknown input type {shown}; {hint}")
            ok = False
            kind = None
        for key in item:
            if key in _INPUT_COMMON or key in _INPUT_SPECIFIC.get(str(kind), ()):
                continue
            if key in _INPUT_FIELDS:
                used_by = sorted(t for t, keys in _INPUT_SPECIFIC.items() if key in keys)
                if kind in INPUT_TYPES:
                    c.add(
                        f"{path}.{key}",
                        f"Property `{key}` does not apply to type {kind} (only to "
                        f"{', '.join(used_by)}): remove it",
                    )
                ok = False
            else:
                c.add(f"{path}.{key}", f"Unknown input property `{key}`: remove it or fix its name")
                ok = False
        if not ok:
            continue
        try:
            inp = msgspec.convert({k: v for k, v in item.items() if k in _INPUT_FIELDS}, Input)
        except msgspec.ValidationError as exc:
            c.add_msgspec(path, exc, f"input '{name}'")
            continue
        if _check_input_semantics(inp, path, c):
            inputs.append(inp)
    _check_input_relations(inputs, paths, c)
    return inputs


def _check_input_semantics(inp: Input, path: str, c: _Checker) -> bool:
    """Whether one input's definition makes sense for its type (each problem is added)."""
    before = len(c.problems)
    kind = inp.type
    if inp.validator is not None:
        try:
            patterns.compiled(inp.validator)
        except patterns.PatternError as exc:
            c.add(f"{path}.validator", str(exc))
    if kind == "FILE" and inp.defaults is not None:
        c.add(f"{path}.defaults", "A FILE input cannot have defaults: a file is uploaded")
    if kind == "FILE" and inp.prefill is not None:
        c.add(f"{path}.prefill", "A FILE input cannot have a prefill: a file is uploaded")
    if inp.prefill is not None and inp.defaults is not None:
        c.add(
            f"{path}.prefill",
            f"Input '{inp.id_}' has both `defaults` and `prefill`: keep `defaults` for a value "
            "used when the input is left empty, or `prefill` for a suggestion that may be cleared",
        )
    if kind == "ARRAY" and inp.itemType is None:
        c.add(f"{path}.itemType", "An ARRAY input needs an `itemType`, e.g. STRING or INT")
    if inp.itemType is not None and (
        inp.itemType in _NOT_ITEM_TYPES or inp.itemType not in INPUT_TYPES
    ):
        allowed = sorted(INPUT_TYPES - _NOT_ITEM_TYPES)
        c.add(
            f"{path}.itemType",
            f"`{inp.itemType}` cannot be the item type of {kind}: use one of {', '.join(allowed)}",
        )
    if kind in CHOICE_TYPES:
        if inp.values is not None and inp.options is not None:
            c.add(f"{path}.options", "Give `values` or its old name `options`, not both")
        offered = choices(inp)
        if not offered and not inp.expression:
            c.add(f"{path}.values", f"A {kind} input needs a non-empty `values` list")
        elif offered and any(not isinstance(v, str | int | float | bool) for v in offered):
            c.add(f"{path}.values", "`values` must be a list of plain values (text, numbers)")
    for name in ("min", "max", "after", "before"):
        try:
            bound(inp, name)
        except ValueError as exc:
            c.add(f"{path}.{name}", f"Input '{inp.id_}': {exc}")
    for low, high in (("min", "max"), ("after", "before")):
        try:
            lower, upper = bound(inp, low), bound(inp, high)
        except ValueError:
            continue
        if lower is not None and upper is not None and not lower <= upper:
            c.add(f"{path}.{low}", f"Input '{inp.id_}': `{low}` is beyond `{high}`")
    if inp.dependsOn is not None:
        if inp.id_ in inp.dependsOn.inputs:
            c.add(f"{path}.dependsOn.inputs", f"Input '{inp.id_}' cannot depend on itself")
        if inp.dependsOn.condition is not None and not inp.dependsOn.condition.strip():
            c.add(f"{path}.dependsOn.condition", "The condition is empty: remove it or write one")
    for name in ("defaults", "prefill"):
        value = getattr(inp, name)
        if len(c.problems) == before and value is not None and not is_templated(value):
            try:
                convert(inp, value)
            except ValueError as exc:
                what = "default" if name == "defaults" else "prefill"
                c.add(f"{path}.{name}", f"Input '{inp.id_}': the {what} is not valid: {exc}")
    return len(c.problems) == before


def _check_input_relations(inputs: list[Input], paths: dict[str, str], c: _Checker) -> None:
    """What involves several inputs: dependencies that exist and form no cycle, and dotted ids
    that do not nest under another input's value."""
    ids = set(paths)
    for inp in inputs:
        for dep in inp.dependsOn.inputs if inp.dependsOn else []:
            if dep not in ids:
                c.add(
                    f"{paths[inp.id_]}.dependsOn.inputs",
                    f"Input '{inp.id_}' depends on '{dep}', which is not an input of this flow",
                )
        parts = inp.id_.split(".")
        for n in range(1, len(parts)):
            parent = ".".join(parts[:n])
            if parent in ids:
                c.add(
                    f"{paths[inp.id_]}.id",
                    f"Input '{inp.id_}' would nest under input '{parent}' (dots nest values): "
                    "rename one of them",
                )
                break
    try:
        dependency_order(inputs)
    except ValueError as exc:
        c.add("inputs", f"Inputs cannot be resolved: {exc}")


def flow_to_dict(flow: Flow) -> dict[str, Any]:
    """The flow as plain data (what an execution records)."""
    out: dict[str, Any] = msgspec.to_builtins(flow)
    for i, trigger in enumerate(flow.triggers):
        if isinstance(trigger, PendingTrigger):
            out["triggers"][i] = msgspec.to_builtins(trigger.written)
    return out
