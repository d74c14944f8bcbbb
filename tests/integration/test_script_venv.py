"""Python script tasks run in a virtual environment of their own: `pip` installs where the
script runs, `dependencies` are installed once and reused, and Tiercel's own environment never
changes. Real subprocesses and real installs from the package registry configured on the
machine (skipped, with the reason, where it cannot be reached)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.commands import create_execution, deploy_flow, wait_for_end
from engine.execution import Execution, TaskRun
from engine.server import ServerContext
from plugins.scripts import venvs

BEFORE_PACKAGE, BEFORE_MODULE = "pyjokes", "pyjokes"
"""Installed by `pip install` in beforeCommands: tiny, pure Python."""
DEPENDENCY, DEPENDENCY_MODULE = "inflection", "inflection"
"""Installed as a `dependencies` entry: tiny, pure Python."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip when the machine's package registry does not serve the test packages."""
    target = tmp_path_factory.mktemp("registry-check")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q"]
    try:
        done = subprocess.run(
            [*command, "-d", str(target), BEFORE_PACKAGE, DEPENDENCY],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("the package registry cannot be reached: pip download timed out")
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        pytest.skip(f"the package registry cannot be reached: {lines[-1]}")


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("script-cache")


@pytest.fixture(autouse=True)
def cache(module_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cache of this module's own, so that what is installed first here is known."""
    monkeypatch.setenv(venvs.CACHE_ENV, str(module_cache))
    yield module_cache / "python"


def _site_packages_listing() -> set[str]:
    folder = Path(sysconfig.get_paths()["purelib"])
    return {p.name for p in folder.iterdir()}


class Run:
    """An ended execution: its task runs by id and its log lines."""

    def __init__(self, state: Execution, events: list[Any]) -> None:
        self.state = state
        self.runs: dict[str, TaskRun] = {r.taskId: r for r in state.taskruns.values()}
        self.logs: list[tuple[str, str, str]] = []
        for e in events:
            if e.type == "AttemptLogged":
                self.logs.extend((e.event.taskId, x["level"], x["message"]) for x in e.event.lines)

    def vars(self, task_id: str) -> dict[str, Any]:
        outputs = self.runs[task_id].outputs or {}
        result: dict[str, Any] = outputs.get("vars", {})
        return result

    def messages(self, task_id: str | None = None) -> list[str]:
        return [m for t, _, m in self.logs if task_id is None or t == task_id]


async def _run(engine: ServerContext, source: str) -> Run:
    record = await deploy_flow(engine.store, source)
    xid = await create_execution(engine.store, record.namespace, record.id)
    state = await wait_for_end(engine.store, engine.notifier, xid, timeout=180)
    return Run(state, await engine.store.read_execution(xid))


async def test_pip_install_in_before_commands_lands_where_the_script_runs_and_nowhere_else(
    engine: ServerContext, ns: str, registry: None
) -> None:
    before = _site_packages_listing()
    run = await _run(
        engine,
        f"""
id: before
namespace: {ns}
tasks:
  - id: install
    type: io.kestra.plugin.scripts.python.Script
    beforeCommands:
      - pip install {BEFORE_PACKAGE}
    script: |
      import sys
      import {BEFORE_MODULE}
      from kestra import Kestra
      Kestra.outputs({{"file": {BEFORE_MODULE}.__file__, "prefix": sys.prefix,
                      "base": sys.base_prefix}})
  - id: next
    type: io.kestra.plugin.scripts.python.Script
    script: |
      import importlib.util
      from kestra import Kestra
      Kestra.outputs({{"found": importlib.util.find_spec("{BEFORE_MODULE}") is not None}})
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    found = run.vars("install")
    assert Path(found["prefix"]) in Path(found["file"]).parents
    assert found["prefix"] != found["base"], "a virtual environment"
    assert found["prefix"] != sys.prefix, "not Tiercel's own environment"
    # each attempt has an environment of its own: the next task starts clean
    assert run.vars("next") == {"found": False}
    assert _site_packages_listing() == before
    assert not any(name.startswith(BEFORE_MODULE) for name in before)


async def test_dependencies_are_installed_once_then_reused_by_later_runs(
    engine: ServerContext, ns: str, registry: None, cache: Path
) -> None:
    before = _site_packages_listing()
    flow = """
id: {id}
namespace: {ns}
tasks:
  - id: deps
    type: io.kestra.plugin.scripts.python.Script
    dependencies: {deps}
    script: |
      import {module}, sys
      from kestra import Kestra
      Kestra.outputs({{"file": {module}.__file__, "prefix": sys.prefix,
                      "word": {module}.camelize("used_twice")}})
"""
    source = flow.format(id="first", ns=ns, deps=f"[{DEPENDENCY}]", module=DEPENDENCY_MODULE)
    first = await _run(engine, source)
    again = await _run(engine, source)
    # the same list in another order, with a duplicate: the same environment
    source = flow.format(
        id="other", ns=ns, deps=f"['{DEPENDENCY}', ' {DEPENDENCY}']", module=DEPENDENCY_MODULE
    )
    other = await _run(engine, source)

    for run in (first, again, other):
        assert run.state.state == "SUCCESS", run.messages()
        assert run.vars("deps")["word"] == "UsedTwice"
    installing = f"Installing {DEPENDENCY} into a cached environment"
    assert installing in first.messages("deps")
    assert installing not in again.messages("deps") + other.messages("deps")
    files = {run.vars("deps")["file"] for run in (first, again, other)}
    assert len(files) == 1, "one cached copy"
    (file,) = files
    assert cache in Path(file).parents
    # the package sits in the cached layer, not in the attempt's environment
    assert Path(first.vars("deps")["prefix"]) not in Path(file).parents
    assert _site_packages_listing() == before


async def test_dependencies_without_the_cache_are_installed_in_the_attempt_itself(
    engine: ServerContext, ns: str, registry: None, cache: Path
) -> None:
    run = await _run(
        engine,
        f"""
id: uncached
namespace: {ns}
tasks:
  - id: deps
    type: io.kestra.plugin.scripts.python.Script
    dependencyCacheEnabled: false
    packageManager: PIP
    dependencies: ["{DEPENDENCY}==0.5.1"]
    script: |
      import {DEPENDENCY_MODULE}, sys
      from kestra import Kestra
      Kestra.outputs({{"file": {DEPENDENCY_MODULE}.__file__, "prefix": sys.prefix}})
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    found = run.vars("deps")
    assert Path(found["prefix"]) in Path(found["file"]).parents
    assert cache not in Path(found["file"]).parents


async def test_tasks_needing_the_same_new_dependencies_at_once_share_one_install(
    engine: ServerContext, ns: str, registry: None
) -> None:
    deps = f"[{DEPENDENCY}, {BEFORE_PACKAGE}]"
    script = f"""
        type: io.kestra.plugin.scripts.python.Script
        dependencies: {deps}
        script: |
          import {DEPENDENCY_MODULE}, {BEFORE_MODULE}
          print({DEPENDENCY_MODULE}.__file__)"""
    run = await _run(
        engine,
        f"""
id: together
namespace: {ns}
tasks:
  - id: parallel
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: a{script}
      - id: b{script}
      - id: c{script}
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    installs = [m for m in run.messages() if m.startswith("Installing ")]
    assert len(installs) == 1, installs
    files = {run.messages(t)[-1] for t in ("a", "b", "c")}
    assert len(files) == 1, files


async def test_pip_and_python_of_a_script_are_one_interpreter(
    engine: ServerContext, ns: str
) -> None:
    commands = """
      - echo "python=$(python -c 'import sys; print(sys.executable)')"
      - echo "pip=$(pip debug 2>/dev/null | sed -n 's/^sys.executable:[ ]//p')"
      - echo "prefix=$(python -c 'import sys; print(sys.prefix)')"
      - echo "prefix3=$(python3 -c 'import sys; print(sys.prefix)')"
      - echo "venv=$VIRTUAL_ENV"
      - pip --version"""
    run = await _run(
        engine,
        f"""
id: same
namespace: {ns}
tasks:
  - id: py
    type: io.kestra.plugin.scripts.python.Commands
    commands: {commands}
  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    commands: {commands}
""",
    )
    assert run.state.state == "SUCCESS", run.messages()
    for task in ("py", "sh"):
        lines = dict(m.split("=", 1) for m in run.messages(task) if "=" in m)
        assert lines["python"] == lines["pip"], lines
        assert lines["prefix"] == lines["prefix3"] == lines["venv"], lines
        assert Path(lines["python"]).parent.parent == Path(lines["prefix"])
        assert lines["prefix"] != sys.prefix
        assert any(m.startswith("pip ") for m in run.messages(task)), run.messages(task)


@pytest.mark.parametrize("manager", ["UV", "PIP"])
async def test_a_failed_install_fails_the_task_with_pips_error_in_its_logs(
    engine: ServerContext, ns: str, registry: None, cache: Path, manager: str
) -> None:
    missing = "tiercel-test-no-such-package-7f3a"
    run = await _run(
        engine,
        f"""
id: broken
namespace: {ns}
tasks:
  - id: deps
    type: io.kestra.plugin.scripts.python.Script
    packageManager: {manager}
    dependencies: [{missing}]
    script: print("never runs")
""",
    )
    assert run.state.state == "FAILED"
    assert "never runs" not in run.messages()
    errors = [m for _, level, m in run.logs if level == "ERROR"]
    assert any(f"No matching distribution found for {missing}" in m for m in errors), errors
    assert missing in (run.runs["deps"].message or "")
    # nothing half-built is left to be taken for a ready environment later
    assert not [
        p
        for p in cache.glob("deps-*")
        if (p / venvs.COMPLETE).exists() and missing in (p / venvs.COMPLETE).read_text()
    ]
