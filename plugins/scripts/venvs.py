"""The Python of script tasks: a virtual environment (PEP 405) for each attempt.

`python`, `python3` and `pip` on a script's PATH are one interpreter, of a virtual environment
made in the attempt's private folder in a few milliseconds, and thrown away with it: whatever
`pip install` installs lands there, never in the worker's own environment nor in a shared cache.
Behind its own packages, the environment sees two cached layers (through a `.pth` file):

- the task's `dependencies`, installed once per list of them and interpreter, in a cached
  virtual environment of their own (with uv where the worker has it, pip otherwise);
- pip itself, copied once from the worker's own pip (or Python's bundled wheel).

The cache lives in `TIERCEL_CACHE_DIR` (default: the user's cache folder, `tiercel`), under
`python/`. Several workers of a host may build the same entry at once: each entry is built under
a lock, and is only used once complete (renamed into place, or marked complete last).

Installs use the registry configured on the machine: the worker's `PIP_*` and `UV_*` variables
and its pip and uv configuration files reach the script (and the installer), and pip's settings
(index, extra indexes, find-links, certificate, constraints) are given to uv as its options.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import trio

from engine.plugin import RunContext, TaskFailure

CACHE_ENV = "TIERCEL_CACHE_DIR"
"""The worker variable naming the cache folder (default: the user's cache folder)."""
COMPLETE = ".tiercel-complete"
"""The file written last in a cached environment: without it, the entry is a failed build."""
LAYERS_PTH = "_tiercel_layers.pth"
PASSED_PREFIXES = ("PIP_", "UV_")
"""Worker variables that configure the installers: they reach scripts as they are."""
LOCK_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class PythonEnvironment:
    """A script's virtual environment."""

    root: Path
    """Its folder (`VIRTUAL_ENV`)."""
    bin_dirs: list[Path]
    """Folders to put first on PATH, in order: its own, then the dependencies' (their
    command-line tools)."""


def cache_dir() -> Path:
    """The cache folder of script environments (read each time: a worker's setting)."""
    configured = os.environ.get(CACHE_ENV)
    root = Path(configured) if configured else Path(platformdirs.user_cache_dir("tiercel"))
    return root / "python"


@functools.cache
def interpreter() -> Path:
    """The interpreter behind the worker's own (itself often in a virtual environment)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Path(os.path.realpath(base))


def _version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def version() -> str:
    """The version of scripts' Python (`3.11.7`)."""
    return platform.python_version()


def version_matches(wanted: str) -> bool:
    """Whether `wanted` (`3`, `3.11`, `3.11.7`) names the version of scripts' Python."""
    return version().split(".")[: len(wanted.split("."))] == wanted.split(".")


@functools.cache
def uv_binary() -> str | None:
    """The `uv` program of the worker (its Python package, or on its PATH), if any."""
    if importlib.util.find_spec("uv") is not None:
        with contextlib.suppress(Exception):
            from uv import find_uv_bin

            return str(find_uv_bin())
    return shutil.which("uv")


def passed_variables() -> dict[str, str]:
    """The installers' settings of the worker, for the script's environment: `PIP_*`, `UV_*`,
    the worker user's pip and uv configuration files (the script has a HOME of its own, where
    pip and uv would not find them), and shared download caches."""
    result = {k: v for k, v in os.environ.items() if k.upper().startswith(PASSED_PREFIXES)}
    home = Path.home()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    if "PIP_CONFIG_FILE" not in result:
        for candidate in (config / "pip" / "pip.conf", home / ".pip" / "pip.conf"):
            if candidate.is_file():
                result["PIP_CONFIG_FILE"] = str(candidate)
                break
    if "UV_CONFIG_FILE" not in result and (config / "uv" / "uv.toml").is_file():
        result["UV_CONFIG_FILE"] = str(config / "uv" / "uv.toml")
    # shared by every script: pip and uv write their caches safely from several processes
    result.setdefault("PIP_CACHE_DIR", str(cache_dir() / "pip-cache"))
    result.setdefault("UV_CACHE_DIR", str(cache_dir() / "uv-cache"))
    result.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return result


def activate(env: dict[str, str], venv: PythonEnvironment) -> dict[str, str]:
    """`env` with `venv` first on PATH and as VIRTUAL_ENV, as its `activate` script does."""
    path = os.pathsep.join([*(str(d) for d in venv.bin_dirs), env.get("PATH", "")])
    return {**env, "PATH": path.rstrip(os.pathsep), "VIRTUAL_ENV": str(venv.root)}


async def prepare(
    ctx: RunContext,
    folder: Path,
    env: dict[str, str],
    *,
    dependencies: list[str] | None = None,
    cache: bool = True,
    package_manager: str = "UV",
) -> PythonEnvironment:
    """Make the attempt's virtual environment in `folder`, with `dependencies` installed
    (in a cached layer when `cache`, else in the environment itself). `env` is the
    environment of the installer's process (the script's own, before activation)."""
    try:
        return await _prepare(ctx, folder, env, dependencies, cache, package_manager)
    except OSError as exc:
        raise TaskFailure(
            f"The script's Python environment could not be made ({exc}): the cache folder "
            f"{cache_dir()} must be writable (set {CACHE_ENV} to choose another)"
        ) from exc


async def _prepare(
    ctx: RunContext,
    folder: Path,
    env: dict[str, str],
    dependencies: list[str] | None,
    cache: bool,
    package_manager: str,
) -> PythonEnvironment:
    packages = sorted({str(d).strip() for d in dependencies or [] if str(d).strip()})
    try:
        pip = await _pip_layer(ctx, env)
    except OSError as exc:
        if packages:
            raise
        # a script that needs no package still runs, only without pip
        ctx.log("WARN", f"pip is not available to the script: {exc}")
        pip = None
    bin_dirs = [folder / "bin"]
    lines: list[str] = []
    if packages and cache:
        layer = await _dependencies_layer(ctx, env, packages, pip, package_manager)
        # addsitedir, not a plain path: the layer's own .pth files must be processed too
        lines.append(f"import site; site.addsitedir({str(_site(layer))!r})")
        bin_dirs.append(layer / "bin")
    if pip is not None:
        lines.append(str(pip))
    _make_venv(folder, lines, pip=pip is not None)
    if packages and not cache:
        ctx.log("INFO", f"Installing {' '.join(packages)} (dependency cache disabled)")
        await _install(ctx, env, folder, packages, pip, package_manager)
    return PythonEnvironment(folder, bin_dirs)


def _site(venv: Path) -> Path:
    return venv / "lib" / f"python{_version()}" / "site-packages"


def _make_venv(folder: Path, pth_lines: list[str], *, pip: bool | None) -> None:
    """Lay out a virtual environment by hand: the few files PEP 405 asks for, which is all
    `python -m venv --without-pip` makes too, in a fraction of its time. Its `pip` commands run
    its own interpreter's pip (`pip` true), or say that there is none (false); a cached layer
    (None) has none."""
    python = interpreter()
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    site = _site(folder)
    site.mkdir(parents=True)
    if sys.platlibdir != "lib":
        (folder / sys.platlibdir).symlink_to("lib")
    (folder / "pyvenv.cfg").write_text(
        f"home = {python.parent}\n"
        "include-system-site-packages = false\n"
        f"version = {platform.python_version()}\n"
    )
    for name in ("python", "python3", f"python{_version()}"):
        (bin_dir / name).symlink_to(python)
    if pth_lines:
        (site / LAYERS_PTH).write_text("\n".join(pth_lines) + "\n")
    if pip is None:
        return  # a cached layer: its pip commands would be found before the attempt's own
    if pip:
        # a shell wrapper, not a Python shebang: the folder's path may pass the kernel's limit
        text = f'#!/bin/sh\nexec {shlex.quote(str(bin_dir / "python"))} -m pip "$@"\n'
    else:
        # never let `pip` fall through to another interpreter's pip further on PATH
        text = '#!/bin/sh\necho "pip is not available to scripts on this worker" >&2\nexit 1\n'
    for name in ("pip", "pip3", f"pip{_version()}"):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


@contextlib.asynccontextmanager
async def _locked(name: str) -> AsyncIterator[None]:
    """Hold the cache's lock `name` (polled, so that waiting never blocks the worker)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await trio.sleep(LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pip_source() -> tuple[str, list[Path], Path | None]:
    """(version, folders to copy, wheel to unpack) of the pip to give scripts: the worker's
    own pip, else the wheel bundled with Python (`ensurepip`)."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("pip")
        spec = importlib.util.find_spec("pip")
        if spec is not None and spec.origin:
            package = Path(spec.origin).parent
            info = package.parent / f"pip-{dist.version}.dist-info"
            if info.is_dir():
                return dist.version, [package, info], None
    spec = importlib.util.find_spec("ensurepip")
    if spec is not None and spec.origin:
        wheels = sorted((Path(spec.origin).parent / "_bundled").glob("pip-*.whl"))
        if wheels:
            return wheels[-1].name.split("-")[1], [], wheels[-1]
    return "", [], None


async def _pip_layer(ctx: RunContext, env: dict[str, str]) -> Path | None:
    """The cached folder holding pip, made once per pip version; None when the worker has no
    pip to give (scripts then have none)."""
    version, folders, wheel = _pip_source()
    if not version:
        return None
    layer = cache_dir() / f"pip-{version}"
    if layer.is_dir():
        return layer
    async with _locked(layer.name):
        if layer.is_dir():
            return layer
        staging = layer.with_name(f".{layer.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        if wheel is not None:
            command = [str(interpreter()), "-m", "zipfile", "-e", str(wheel), str(staging)]
        else:
            command = ["cp", "-R", *(str(f) for f in folders), str(staging)]
        await _checked(ctx, command, env, "Preparing pip for scripts")
        # a complete folder appears at once: nobody ever sees a half-copied pip
        staging.rename(layer)
    return layer


def dependencies_key(packages: list[str]) -> str:
    """The cache key of a list of dependencies: the sorted list and the interpreter."""
    text = json.dumps([str(interpreter()), platform.python_version(), sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


async def _dependencies_layer(
    ctx: RunContext, env: dict[str, str], packages: list[str], pip: Path | None, manager: str
) -> Path:
    """The cached virtual environment holding `packages`, installed on first use."""
    layer = cache_dir() / f"deps-{dependencies_key(packages)}"
    if (layer / COMPLETE).is_file():
        return layer
    async with _locked(layer.name):
        if (layer / COMPLETE).is_file():
            ctx.log("INFO", f"Using the cached environment of {' '.join(packages)}")
            return layer
        # Built in place, not renamed: installers write the folder's path into its commands'
        # first lines. Without the mark, whatever is there is a build that did not finish.
        shutil.rmtree(layer, ignore_errors=True)
        _make_venv(layer, [], pip=None)
        ctx.log("INFO", f"Installing {' '.join(packages)} into a cached environment")
        try:
            await _install(ctx, env, layer, packages, pip, manager)
        except BaseException:
            shutil.rmtree(layer, ignore_errors=True)
            raise
        (layer / COMPLETE).write_text(json.dumps(packages) + "\n")
    return layer


async def _install(
    ctx: RunContext,
    env: dict[str, str],
    venv: Path,
    packages: list[str],
    pip: Path | None,
    manager: str,
) -> None:
    """Install `packages` into `venv`: with uv when asked and available (falling back to pip
    should uv fail), with pip otherwise; a failure fails the task, the installer's error in
    its logs."""
    python = venv / "bin" / "python"
    pip_env = {**env, "PYTHONPATH": str(pip)} if pip is not None else dict(env)
    uv = uv_binary()
    if manager.upper() != "PIP" and uv is not None:
        options, variables = await _uv_settings(ctx, python, pip_env) if pip else ([], {})
        command = [uv, "pip", "install", "--quiet", "--python", str(python), *options, *packages]
        lines: list[str] = []
        # the worker's interpreter is the one wanted: never one uv would download
        variables = {"UV_PYTHON_DOWNLOADS": "never", **variables}
        code = await _run(ctx, command, {**env, **variables}, lines)
        if code == 0:
            return
        for line in lines:
            ctx.log("WARN", line)
        if pip is None:
            raise TaskFailure(f"Installing {' '.join(packages)} with uv failed (exit code {code})")
        ctx.log("WARN", f"uv could not install {' '.join(packages)}: trying pip")
    if pip is None:
        raise TaskFailure("pip is not available to install the dependencies")
    command = [str(python), "-m", "pip", "install", "--quiet", *packages]
    await _checked(ctx, command, pip_env, f"Installing {' '.join(packages)} with pip")


async def _uv_settings(
    ctx: RunContext, python: Path, env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """pip's settings as uv's options and variables: uv reads no pip configuration, and a
    machine's registry (a mirror, its certificate authority) is often configured for pip
    only."""
    lines: list[str] = []
    if await _run(ctx, [str(python), "-m", "pip", "config", "list"], env, lines):
        return [], {}
    rank = {":env:": 3, "install": 2, "global": 1}
    settings: dict[str, tuple[int, str]] = {}
    for line in lines:
        key, _, raw = line.partition("=")
        section, _, name = key.partition(".")
        value = raw.strip().strip("'\"")
        level = rank.get(section, 0)
        if name and level and level >= settings.get(name, (0, ""))[0]:
            settings[name] = (level, value)
    options: list[str] = []
    variables: dict[str, str] = {}
    flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url"}
    flags |= {"find-links": "--find-links", "constraint": "--constraint"}
    flags |= {"trusted-host": "--allow-insecure-host"}
    for name, (_, value) in settings.items():
        if name in flags:
            for item in value.split():
                options += [flags[name], item]
        elif name == "no-index" and value.lower() in ("1", "true", "yes", "on"):
            options.append("--no-index")
        elif name == "cert":
            variables["SSL_CERT_FILE"] = value
        elif name == "proxy":
            variables["HTTP_PROXY"] = variables["HTTPS_PROXY"] = value
        elif name in ("timeout", "default-timeout"):
            variables["UV_HTTP_TIMEOUT"] = value
    return options, variables


async def _run(ctx: RunContext, command: list[str], env: dict[str, str], lines: list[str]) -> int:
    """Run a command of the environment's set-up; its output lines into `lines`."""
    from plugins.scripts import process  # process imports this module

    return await process.execute(
        command,
        ctx=ctx,
        cwd=ctx.working_dir,
        env=env,
        on_line=lambda text, _stderr: lines.append(text) if text.strip() else None,
    )


async def _checked(ctx: RunContext, command: list[str], env: dict[str, str], what: str) -> None:
    """Run a set-up command; should it fail, log its output and fail the task."""
    lines: list[str] = []
    code = await _run(ctx, command, env, lines)
    if code != 0:
        for line in lines:
            ctx.log("WARN" if line.startswith("WARNING") else "ERROR", line)
        last = lines[-1] if lines else "no output"
        raise TaskFailure(f"{what} failed (exit code {code}): {last}")
