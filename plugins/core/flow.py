"""`io.kestra.plugin.core.flow.*`: flow control, resolved by the executor."""

from __future__ import annotations

from typing import ClassVar

from engine.plugin import FlowableTask, Navigator, Task, parse_duration, register


def _errors_after(nav: Navigator, state: str | None, errors: list[Task]) -> str | None:
    # A failed branch runs its own `errors` tasks, then stays failed.
    if state != "FAILED" or not errors:
        return state
    handled = nav.sequence(errors)
    return None if handled is None else "FAILED"


@register("io.kestra.plugin.core.flow.Sequential", "io.kestra.core.tasks.flows.Sequential")
class Sequential(FlowableTask, kw_only=True):
    """Run tasks one after the other."""

    __child_fields__: ClassVar[tuple[str, ...]] = ("tasks", "errors")
    __required_children__: ClassVar[tuple[str, ...]] = ("tasks",)
    tasks: list[Task] = []
    """The tasks to run in order."""
    errors: list[Task] = []
    """Tasks to run when one of `tasks` fails."""

    def branches(self) -> dict[str, list[Task]]:
        return {"tasks": self.tasks, "errors": self.errors}

    def resolve(self, nav: Navigator) -> str | None:
        return _errors_after(nav, nav.sequence(self.tasks), self.errors)


@register("io.kestra.plugin.core.flow.Parallel", "io.kestra.core.tasks.flows.Parallel")
class Parallel(FlowableTask, kw_only=True):
    """Run tasks side by side; `concurrent` caps how many run at once (0: all)."""

    __child_fields__: ClassVar[tuple[str, ...]] = ("tasks", "errors")
    __required_children__: ClassVar[tuple[str, ...]] = ("tasks",)
    tasks: list[Task] = []
    """The tasks to run at once."""
    concurrent: int = 0
    """How many tasks may run at once; 0 means no limit."""
    errors: list[Task] = []
    """Tasks to run when one of `tasks` fails."""

    def branches(self) -> dict[str, list[Task]]:
        return {"tasks": self.tasks, "errors": self.errors}

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
