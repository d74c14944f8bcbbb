"""`io.kestra.plugin.core.flow.*`: flow control, resolved by the executor."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import msgspec

from engine.plugin import (
    FlowableTask,
    Navigator,
    RunContext,
    RunnableTask,
    Task,
    TaskFailure,
    parse_duration,
    register,
)


def _errors_after(nav: Navigator, state: str | None, errors: list[Task]) -> str | None:
    # A failed branch runs its own `errors` tasks, then stays failed.
    if state != "FAILED" or not errors:
        return state
    handled = nav.sequence(errors)
    return None if handled is None else "FAILED"


class TaskGroup(FlowableTask, kw_only=True):
    """A flowable task with a list of `tasks` and its own `errors` branch."""

    __child_fields__: ClassVar[tuple[str, ...]] = ("tasks", "errors")
    __required_children__: ClassVar[tuple[str, ...]] = ("tasks",)
    tasks: list[Task] = []
    """The tasks it runs."""
    errors: list[Task] = []
    """Tasks to run when one of `tasks` fails."""

    def branches(self) -> dict[str, list[Task]]:
        return {"tasks": self.tasks, "errors": self.errors}


@register("io.kestra.plugin.core.flow.Sequential", "io.kestra.core.tasks.flows.Sequential")
class Sequential(TaskGroup, kw_only=True):
    """Run tasks one after the other."""

    def resolve(self, nav: Navigator) -> str | None:
        return _errors_after(nav, nav.sequence(self.tasks), self.errors)


@register("io.kestra.plugin.core.flow.Parallel", "io.kestra.core.tasks.flows.Parallel")
class Parallel(TaskGroup, kw_only=True):
    """Run tasks side by side; `concurrent` caps how many run at once (0: all)."""

    concurrent: int = 0
    """How many tasks may run at once; 0 means no limit."""

    def problems(self) -> list[tuple[str, str]]:
        return [("concurrent", "Must be 0 or more")] if self.concurrent < 0 else []

    def resolve(self, nav: Navigator) -> str | None:
        return _errors_after(nav, nav.parallel(self.tasks, limit=self.concurrent), self.errors)


@register("io.kestra.plugin.core.flow.Sleep", "io.kestra.core.tasks.flows.Sleep")
class Sleep(FlowableTask, kw_only=True):
    """Wait for `duration` without holding a worker: the executor sets a timer."""

    duration: str
    """How long to wait, as an ISO-8601 duration (PT30S) or a template rendering one."""

    def problems(self) -> list[tuple[str, str]]:
        if "{{" in self.duration:
            return []
        try:
            parse_duration(self.duration)
        except ValueError as exc:
            return [("duration", str(exc))]
        return []

    def resolve(self, nav: Navigator) -> str | None:
        wait = parse_duration(str(nav.render(self.duration)))
        return "SUCCESS" if nav.sleep_until(nav.started + wait) else None


def _text(value: Any) -> str:
    """A rendered value as Kestra compares it: booleans as true/false, maps and lists as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "null", "none")
    return bool(value)


def loop_values(nav: Navigator, raw: Any, field: str) -> list[str]:
    """The iteration values of a loop: a list, or a JSON array in a string, after rendering."""
    value = nav.render(raw)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise TaskFailure(
                f"`{field}` must be a list or a JSON array, got {value[:80]!r}"
            ) from None
    if not isinstance(value, list):
        raise TaskFailure(f"`{field}` must be a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if item is None:
            raise TaskFailure(f"`{field}`[{i}] is null: every value of a loop must be set")
        out.append(item if isinstance(item, str) else _text(item))
    return out


def _loop_problems(value: Any, field: str) -> list[tuple[str, str]]:
    if isinstance(value, str) and "{{" not in value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return [(field, "Must be a list or a JSON array (or a template rendering one)")]
        if not isinstance(parsed, list):
            return [(field, "Must be a JSON array")]
    elif not isinstance(value, str | list):
        return [(field, "Must be a list or a JSON array")]
    return []


@register("io.kestra.plugin.core.flow.If", "io.kestra.core.tasks.flows.If")
class If(FlowableTask, kw_only=True):
    """Run `then` when `condition` renders true, `else` otherwise."""

    __child_fields__: ClassVar[tuple[str, ...]] = ("then", "else", "errors")
    __required_children__: ClassVar[tuple[str, ...]] = ("then",)
    condition: Any
    """The condition: a template rendering true or false."""
    then: list[Task] = []
    """Tasks to run when the condition is true."""
    else_: list[Task] = msgspec.field(default_factory=list, name="else")
    """Tasks to run when the condition is false."""
    errors: list[Task] = []
    """Tasks to run when a branch fails."""

    def branches(self) -> dict[str, list[Task]]:
        return {"then": self.then, "else": self.else_, "errors": self.errors}

    def resolve(self, nav: Navigator) -> str | None:
        branch = self.then if _truthy(nav.render(self.condition)) else self.else_
        return _errors_after(nav, nav.sequence(branch), self.errors)


@register("io.kestra.plugin.core.flow.Switch", "io.kestra.core.tasks.flows.Switch")
class Switch(FlowableTask, kw_only=True):
    """Run the tasks of the case matching `value`, or `defaults` when none matches."""

    __child_fields__: ClassVar[tuple[str, ...]] = ("defaults", "errors")
    __nested_fields__: ClassVar[tuple[str, ...]] = ("cases",)
    value: Any
    """The value to match against the case names (rendered)."""
    cases: dict[str, list[Task]] = {}
    """Task lists by the value that selects them."""
    defaults: list[Task] = []
    """Tasks to run when no case matches."""
    errors: list[Task] = []
    """Tasks to run when the chosen branch fails."""

    def branches(self) -> dict[str, list[Task]]:
        out = {f"cases.{k}": v for k, v in self.cases.items()}
        out.update(defaults=self.defaults, errors=self.errors)
        return out

    def problems(self) -> list[tuple[str, str]]:
        if not self.cases and not self.defaults:
            return [("cases", "A Switch needs `cases`, `defaults`, or both")]
        return []

    def resolve(self, nav: Navigator) -> str | None:
        value = _text(nav.render(self.value))
        if value in self.cases:
            branch, matched = self.cases[value], True
        elif self.defaults:
            branch, matched = self.defaults, False
        else:
            raise TaskFailure(
                f"Switch '{self.id}': no case for value {value!r} and no `defaults` "
                f"(cases: {', '.join(self.cases)})"
            )
        nav.outputs({"value": value, "defaults": not matched})
        return _errors_after(nav, nav.sequence(branch), self.errors)


@register("io.kestra.plugin.core.flow.ForEach")
class ForEach(TaskGroup, kw_only=True):
    """Run `tasks` for each of `values`; `{{ taskrun.value }}` is the current one."""

    __loop__: ClassVar[bool] = True
    values: Any
    """A list, or a JSON array (possibly templated)."""
    concurrencyLimit: int = 1
    """How many values run at once; 0 means all of them."""

    def problems(self) -> list[tuple[str, str]]:
        found = _loop_problems(self.values, "values")
        if self.concurrencyLimit < 0:
            found.append(("concurrencyLimit", "Must be 0 (no limit) or more"))
        return found

    def resolve(self, nav: Navigator) -> str | None:
        values = loop_values(nav, self.values, "values")
        state = nav.iterate(self.tasks, values, limit=self.concurrencyLimit)
        return _errors_after(nav, state, self.errors)


@register("io.kestra.plugin.core.flow.EachSequential", "io.kestra.core.tasks.flows.EachSequential")
class EachSequential(TaskGroup, kw_only=True):
    """Run `tasks` for each value, one value after the other (use ForEach in new flows)."""

    __loop__: ClassVar[bool] = True
    value: Any
    """A list, or a JSON array (possibly templated)."""

    def problems(self) -> list[tuple[str, str]]:
        return _loop_problems(self.value, "value")

    def resolve(self, nav: Navigator) -> str | None:
        values = loop_values(nav, self.value, "value")
        return _errors_after(nav, nav.iterate(self.tasks, values, limit=1), self.errors)


@register("io.kestra.plugin.core.flow.EachParallel", "io.kestra.core.tasks.flows.EachParallel")
class EachParallel(TaskGroup, kw_only=True):
    """Run `tasks` for each value, all values and tasks side by side (use ForEach in new flows)."""

    __loop__: ClassVar[bool] = True
    value: Any
    """A list, or a JSON array (possibly templated)."""
    concurrent: int = 0
    """How many values run at once; 0 means all of them."""

    def problems(self) -> list[tuple[str, str]]:
        return _loop_problems(self.value, "value")

    def resolve(self, nav: Navigator) -> str | None:
        values = loop_values(nav, self.value, "value")
        state = nav.iterate(self.tasks, values, limit=self.concurrent, concurrent_tasks=True)
        return _errors_after(nav, state, self.errors)


@register("io.kestra.plugin.core.flow.AllowFailure", "io.kestra.core.tasks.flows.AllowFailure")
class AllowFailure(TaskGroup, kw_only=True):
    """Run tasks in order; a failure among them ends this task in WARNING, not FAILED."""

    def resolve(self, nav: Navigator) -> str | None:
        state = _errors_after(nav, nav.sequence(self.tasks), self.errors)
        return "WARNING" if state in ("FAILED", "KILLED") else state


@register("io.kestra.plugin.core.flow.Dag", "io.kestra.core.tasks.flows.Dag")
class Dag(FlowableTask, kw_only=True):
    """Run tasks as soon as the tasks they depend on (`dependsOn`) have succeeded."""

    __child_fields__: ClassVar[tuple[str, ...]] = ("errors",)
    __nested_fields__: ClassVar[tuple[str, ...]] = ("tasks",)
    tasks: list[Any] = []
    """Items `{task: <task>, dependsOn: [task ids]}`."""
    concurrent: int = 0
    """How many tasks run at once; 0 means no limit."""
    errors: list[Task] = []
    """Tasks to run when one of `tasks` fails."""

    def _items(self) -> list[tuple[Task, list[str]]]:
        return [
            (item["task"], list(item.get("dependsOn") or []))
            for item in self.tasks
            if isinstance(item, dict) and isinstance(item.get("task"), Task)
        ]

    def branches(self) -> dict[str, list[Task]]:
        return {"tasks": [t for t, _ in self._items()], "errors": self.errors}

    def problems(self) -> list[tuple[str, str]]:
        if not self.tasks:
            return [("tasks", "A Dag needs at least one task")]
        found: list[tuple[str, str]] = []
        items = self._items()
        ids = {t.id for t, _ in items}
        for i, (task, deps) in enumerate(items):
            for dep in deps:
                if dep not in ids:
                    found.append(
                        (
                            f"tasks[{i}].dependsOn",
                            f"Task '{task.id}' depends on unknown task '{dep}'",
                        )
                    )
        graph = {t.id: deps for t, deps in items}
        cycle = _find_cycle(graph)
        if cycle:
            found.append(("tasks", "Cyclic dependency: " + " -> ".join(cycle)))
        return found

    def resolve(self, nav: Navigator) -> str | None:
        items = self._items()

        def ready() -> list[Task]:
            done = {t.id: nav.peek(t) for t, _ in items}
            return [t for t, deps in items if all(done[d] in ("SUCCESS", "WARNING") for d in deps)]

        runnable = ready()
        while True:
            state = nav.parallel(runnable, limit=self.concurrent)
            if state is None:
                return None
            if state in ("FAILED", "KILLED") or len(runnable) == len(items):
                return _errors_after(nav, state, self.errors)
            more = ready()
            if len(more) == len(runnable):  # the rest waits on tasks that cannot succeed
                return _errors_after(nav, "FAILED", self.errors)
            runnable = more


def _find_cycle(graph: dict[str, list[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep in graph and not state.get(dep):
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in graph:
        if not state.get(node):
            found = visit(node)
            if found:
                return found
    return []


@register(
    "io.kestra.plugin.core.flow.WorkingDirectory", "io.kestra.core.tasks.flows.WorkingDirectory"
)
class WorkingDirectory(TaskGroup, kw_only=True):
    """Run tasks in order in one shared working directory: files one task writes, the next sees."""

    __working_directory__: ClassVar[bool] = True
    inputFiles: Any = None
    """Files to create in the directory before the first task (name: content)."""
    outputFiles: list[str] = []
    """Globs of files to keep in internal storage after the tasks; output `outputFiles`."""
    cache: dict[str, Any] | None = None
    """Accepted for compatibility; the directory is rebuilt for every execution."""
    namespaceFiles: dict[str, Any] | None = None
    """Accepted for compatibility."""

    def problems(self) -> list[tuple[str, str]]:
        if not self.tasks:
            return [("tasks", "A WorkingDirectory needs at least one task")]
        for i, task in enumerate(self.tasks):
            if isinstance(task, FlowableTask):
                return [(f"tasks[{i}]", "Only runnable tasks may run in a WorkingDirectory")]
        return []

    def resolve(self, nav: Navigator) -> str | None:
        state = nav.sequence(self.tasks)
        if state is not None and self.outputFiles:
            nav.outputs({"outputFiles": nav.child_files()}, final=True)
        return _errors_after(nav, state, self.errors)


@register("io.kestra.plugin.core.flow.Pause", "io.kestra.core.tasks.flows.Pause")
class Pause(FlowableTask, kw_only=True):
    """Pause the execution until it is resumed (API or Resume task), or until `delay` passed."""

    __child_fields__: ClassVar[tuple[str, ...]] = ("tasks", "errors")
    delay: str | None = None
    """Resume by itself after this duration."""
    timeout: str | None = None
    """Fail when not resumed within this duration."""
    pauseDuration: str | None = None
    """Like `delay` (newer name)."""
    behavior: str = "RESUME"
    """What to do when `pauseDuration` passes: RESUME, WARN, FAIL or CANCEL."""
    onResume: list[dict[str, Any]] = []
    """Inputs asked for on resume; their values become the outputs `onResume`."""
    tasks: list[Task] = []
    """Tasks to run once resumed (deprecated in Kestra)."""
    errors: list[Task] = []
    """Tasks to run when `tasks` fails."""

    def branches(self) -> dict[str, list[Task]]:
        return {"tasks": self.tasks, "errors": self.errors}

    def problems(self) -> list[tuple[str, str]]:
        found = []
        for name in ("delay", "timeout", "pauseDuration"):
            value = getattr(self, name)
            if value and "{{" not in value:
                try:
                    parse_duration(value)
                except ValueError as exc:
                    found.append((name, str(exc)))
        return found

    def resolve(self, nav: Navigator) -> str | None:
        delay = self.delay or (self.pauseDuration if self.behavior == "RESUME" else None)
        resumed = False
        if delay:
            resumed = nav.sleep_until(nav.started + parse_duration(str(nav.render(delay))))
        limit = self.timeout or (self.pauseDuration if self.behavior != "RESUME" else None)
        if not resumed and limit:
            if nav.sleep_until(nav.started + parse_duration(str(nav.render(limit))), key="timeout"):
                outcome = {"WARN": "WARNING", "CANCEL": "KILLED"}.get(self.behavior, "FAILED")
                return outcome
        if not resumed and not delay:
            resumed = nav.pause()
        if not resumed:
            return None
        return (
            _errors_after(nav, nav.sequence(self.tasks), self.errors) if self.tasks else "SUCCESS"
        )


@register(
    "io.kestra.plugin.core.flow.Subflow",
    "io.kestra.core.tasks.flows.Subflow",
    "io.kestra.core.tasks.flows.Flow",
    "io.kestra.plugin.core.flow.Flow",
)
class Subflow(FlowableTask, kw_only=True):
    """Start an execution of another flow and (by default) wait for it."""

    namespace: str
    """The namespace of the flow to run."""
    flowId: str
    """The id of the flow to run."""
    revision: int | None = None
    """A revision of that flow (default: the latest)."""
    inputs: dict[str, Any] = {}
    """Inputs of the child execution (rendered)."""
    labels: Any = None
    """Labels of the child execution (map or list of key/value)."""
    wait: bool = True
    """Wait for the child execution to end."""
    transmitFailed: bool = True
    """A failed or killed child fails this task run (when waiting)."""
    inheritLabels: bool = False
    """Give the child the labels of this execution."""
    outputs: dict[str, Any] = {}
    """Outputs to extract from the child (deprecated: use the subflow's flow outputs)."""
    scheduleDate: str | None = None
    """Accepted for compatibility."""

    def resolve(self, nav: Navigator) -> str | None:
        labels: dict[str, str] = {}
        if self.inheritLabels:
            labels.update(nav.render("{{ labels }}") or {})
        given = nav.render(self.labels) if self.labels is not None else {}
        if isinstance(given, list):
            labels.update({str(i["key"]): _text(i["value"]) for i in given if isinstance(i, dict)})
        elif isinstance(given, dict):
            labels.update({str(k): _text(v) for k, v in given.items()})
        result = nav.subflow(
            str(nav.render(self.namespace)),
            str(nav.render(self.flowId)),
            inputs=nav.render(self.inputs),
            labels=labels,
            revision=self.revision,
            wait=self.wait,
        )
        if result is None:
            return None
        outputs = {k: v for k, v in result.items() if k != "message"}
        nav.outputs(outputs, final=True)
        if "state" not in result:
            return "SUCCESS"  # not waiting
        if "message" in result:
            raise TaskFailure(str(result["message"]))
        if result["state"] in ("FAILED", "KILLED") and self.transmitFailed:
            return "FAILED"
        return "WARNING" if result["state"] == "WARNING" else "SUCCESS"


@register("io.kestra.plugin.core.flow.WaitFor", "io.kestra.plugin.core.flow.LoopUntil")
class WaitFor(TaskGroup, kw_only=True):
    """Run `tasks` again and again until `condition` renders true (checked after each round).

    `{{ outputs.<this task>.iterationCount }}` is the number of rounds finished so far."""

    condition: Any
    """Stop once this renders true (0, null, false and '' are false)."""
    checkFrequency: dict[str, Any] = {}
    """`maxIterations` (default 100), `maxDuration` (PT1H) and `interval` between rounds (PT1S)."""
    failOnMaxReached: bool = False
    """End FAILED (instead of SUCCESS) when a maximum is reached first."""

    def problems(self) -> list[tuple[str, str]]:
        found = []
        unknown = set(self.checkFrequency) - {"maxIterations", "maxDuration", "interval"}
        if unknown:
            found.append(("checkFrequency", f"Unknown keys: {', '.join(sorted(unknown))}"))
        for key in ("maxDuration", "interval"):
            value = self.checkFrequency.get(key)
            if value is not None:
                try:
                    parse_duration(str(value))
                except ValueError as exc:
                    found.append((f"checkFrequency.{key}", str(exc)))
        return found

    def resolve(self, nav: Navigator) -> str | None:
        done = int(nav.own_outputs.get("iterationCount", 0))
        nav.outputs({"iterationCount": done})
        state = nav.sequence(self.tasks, iteration=done)
        if state is None:
            return None
        if state in ("FAILED", "KILLED"):
            return _errors_after(nav, state, self.errors)
        if _truthy(nav.render(self.condition)):
            nav.outputs({"iterationCount": done + 1}, final=True)
            return "SUCCESS"
        limit = int(self.checkFrequency.get("maxIterations", 100))
        longest = parse_duration(str(self.checkFrequency.get("maxDuration", "PT1H")))
        if done + 1 >= limit or nav.now >= nav.started + longest:
            nav.outputs({"iterationCount": done + 1}, final=True)
            return "FAILED" if self.failOnMaxReached else "SUCCESS"
        interval = parse_duration(str(self.checkFrequency.get("interval", "PT1S")))
        if not nav.sleep_until(nav.now + interval, key=f"round{done}"):
            return None
        nav.outputs({"iterationCount": done + 1})
        return None


@register("io.kestra.plugin.core.flow.ForEachItem$ForEachItemSplit")
class ForEachItemSplit(RunnableTask, kw_only=True):
    """Split a stored file into batches (the first step of a ForEachItem)."""

    items: str
    """The `kestra://` URI of the file to split."""
    batch: dict[str, Any] = {}
    """`rows` per batch (default 1), or `partitions` (a number of batches), or `bytes`."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        uri = str(await ctx.render_async(self.items)).strip()
        path = await ctx.get_file(uri)
        settings = await ctx.render_async(dict(self.batch))
        separator = str(settings.get("separator", "\n")).encode().decode("unicode_escape")
        text = path.read_text()
        lines = [line for line in text.split(separator) if line != ""]
        groups = _batches(lines, settings)
        splits = []
        for i, group in enumerate(groups, start=1):
            data = (separator.join(group) + separator).encode()
            splits.append(await ctx.put_file(data, f"batch-{i}.txt"))
        ctx.log("INFO", f"Split {len(lines)} items of {uri} into {len(splits)} batches")
        return {"splits": splits, "numberOfBatches": len(splits)}


def _batches(lines: list[str], settings: dict[str, Any]) -> list[list[str]]:
    if settings.get("partitions"):
        count = max(int(settings["partitions"]), 1)
        size = -(-len(lines) // count) if lines else 1
        return [lines[i : i + size] for i in range(0, len(lines), size)]
    if settings.get("bytes"):
        limit = _size(str(settings["bytes"]))
        groups: list[list[str]] = [[]]
        used = 0
        for line in lines:
            if groups[-1] and used + len(line.encode()) + 1 > limit:
                groups.append([])
                used = 0
            groups[-1].append(line)
            used += len(line.encode()) + 1
        return [g for g in groups if g]
    rows = max(int(settings.get("rows", 1)), 1)
    return [lines[i : i + rows] for i in range(0, len(lines), rows)]


def _size(text: str) -> int:
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)].strip()) * factor)
    return int(upper)


@register("io.kestra.plugin.core.flow.ForEachItem$ForEachItemMergeOutputs")
class ForEachItemMergeOutputs(RunnableTask, kw_only=True):
    """Write the outputs of every batch's subflow into one file (the last step of a ForEachItem)."""

    results: str
    """A template rendering the batches' results, by batch file."""

    async def run(self, ctx: RunContext) -> dict[str, Any]:
        results = await ctx.render_async(self.results)
        if isinstance(results, str):
            results = json.loads(results) if results.strip() else {}
        lines = [
            json.dumps(result.get("outputs") or {}, separators=(",", ":"))
            for result in (results or {}).values()
            if isinstance(result, dict)
        ]
        uri = await ctx.put_file(("\n".join(lines) + "\n").encode(), "subflow-outputs.jsonl")
        return {"subflowOutputs": uri}


@register("io.kestra.plugin.core.flow.ForEachItem")
class ForEachItem(FlowableTask, kw_only=True):
    """Split a file into batches of items and run one subflow execution per batch;
    `{{ taskrun.items }}` is the batch's file in the subflow's `inputs`."""

    __child_fields__: ClassVar[tuple[str, ...]] = ("errors",)
    __loop__: ClassVar[bool] = True
    __items__: ClassVar[bool] = True
    items: str
    """The file to split: a `kestra://` URI, usually `{{ inputs.file }}` or a task output."""
    batch: dict[str, Any] = {}
    """How to split: `rows` per batch (default 1), `partitions`, or `bytes`; `separator`."""
    namespace: str
    """The namespace of the subflow."""
    flowId: str
    """The id of the subflow."""
    revision: int | None = None
    """A revision of the subflow (default: the latest)."""
    inputs: dict[str, Any] = {}
    """Inputs of each subflow execution (rendered per batch)."""
    labels: Any = None
    """Labels of each subflow execution."""
    wait: bool = True
    """Wait for the subflow executions to end."""
    transmitFailed: bool = True
    """A failed subflow execution fails this task."""
    inheritLabels: bool = False
    """Give the subflow executions the labels of this execution."""
    scheduleDate: str | None = None
    """Accepted for compatibility."""
    errors: list[Task] = []
    """Tasks to run when a batch fails."""

    def _split(self) -> ForEachItemSplit:
        return ForEachItemSplit(
            id=f"{self.id}_split",
            type="io.kestra.plugin.core.flow.ForEachItem$ForEachItemSplit",
            items=self.items,
            batch=self.batch,
        )

    def _executable(self) -> Subflow:
        return Subflow(
            id=f"{self.id}_items",
            type="io.kestra.plugin.core.flow.Subflow",
            namespace=self.namespace,
            flowId=self.flowId,
            revision=self.revision,
            inputs=self.inputs,
            labels=self.labels,
            wait=self.wait,
            transmitFailed=self.transmitFailed,
            inheritLabels=self.inheritLabels,
        )

    def _merge(self) -> ForEachItemMergeOutputs:
        return ForEachItemMergeOutputs(
            id=f"{self.id}_merge",
            type="io.kestra.plugin.core.flow.ForEachItem$ForEachItemMergeOutputs",
            results=f"{{{{ outputs['{self.id}_items'] ?? {{}} }}}}",
        )

    def branches(self) -> dict[str, list[Task]]:
        return {
            "_split": [self._split()],
            "_items": [self._executable()],
            "_merge": [self._merge()],
            "errors": self.errors,
        }

    def problems(self) -> list[tuple[str, str]]:
        unknown = set(self.batch) - {"rows", "partitions", "bytes", "separator"}
        return [("batch", f"Unknown keys: {', '.join(sorted(unknown))}")] if unknown else []

    def resolve(self, nav: Navigator) -> str | None:
        split = nav.sequence([self._split()])
        if split is None:
            return None
        if split in ("FAILED", "KILLED"):
            return _errors_after(nav, split, self.errors)
        splits = nav.render(f"{{{{ outputs['{self.id}_split'].splits }}}}")
        if isinstance(splits, str):
            splits = json.loads(splits)
        state = nav.iterate([self._executable()], [str(s) for s in splits or []])
        if state is None:
            return None
        if state in ("FAILED", "KILLED"):
            return _errors_after(nav, state, self.errors)
        if self.wait:
            merged = nav.sequence([self._merge()])
            if merged is None:
                return None
            if merged in ("FAILED", "KILLED"):
                return _errors_after(nav, merged, self.errors)
        nav.outputs({"numberOfBatches": len(splits or [])}, final=True)
        return state
