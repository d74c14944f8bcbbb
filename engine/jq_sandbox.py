"""jq programs evaluated in a child process with hard limits on memory and time.

libjq is C code: a program that recurses without end aborts the process that runs it (`jq:
error: cannot allocate memory`, no Python exception), and one that loops without end cannot be
interrupted by a Python signal. Neither may take down the executor or a worker, so no jq program
runs in the process that renders a template. A small pool of long-lived children (started with
`sys.executable`, reused across calls) runs them instead: each child limits its own address space
and CPU time with `setrlimit`, and the parent waits for an answer at most `WALL_SECONDS`, killing
the child on overrun. Whatever goes wrong becomes a `TemplateError` that says what to change.

A result depends only on the program and its input, so answers are kept in a bounded in-process
cache: replays and repeated renders do not ask a child again.

The protocol is framed by lengths: a request is `<program bytes> <input bytes>\\n`, then the
program (UTF-8) and the input (JSON text); an answer is `<kind> <body bytes>\\n`, then the body:
a JSON array of the program's results when the kind is `ok`, else a message.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import resource
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import TemplateError

CPU_SECONDS = 2
"""CPU time one program may use."""
WALL_SECONDS = 5.0
"""How long the parent waits for one answer, including a child's start-up."""
MEMORY_BYTES = 512 * 1024 * 1024
"""The address space of a child: the interpreter, libjq and everything the program builds."""
MAX_RESULT_BYTES = 16 * 1024 * 1024
"""The largest JSON text a program's results may take (a task's outputs have the same bound)."""
MAX_CHILDREN = 4
"""How many programs may run at once; more callers wait for a child to be free."""
MAX_IDLE = 2
"""How many children are kept waiting for the next program."""
MAX_REQUESTS_PER_CHILD = 1000
"""A child is replaced after this many programs, so nothing it accumulates can grow unbounded."""
SLOT_WAIT_SECONDS = 60.0
"""How long a caller waits for a free child before giving up."""
CACHE_ENTRIES = 1024
CACHE_BYTES = 16 * 1024 * 1024
MAX_CACHED_ANSWER = 1024 * 1024

_EXCERPT = 120
_STDERR_TAIL = 4096
_ROOT = str(Path(__file__).resolve().parent.parent)
# -I: no PYTHON* variables, no user site-packages, no current directory on the path.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from engine.jq_sandbox import serve_child; serve_child()"
)


@dataclass(frozen=True)
class Counters:
    """What the sandbox has done in this process (for tests and diagnostics)."""

    children_started: int
    programs_run: int
    cache_hits: int


def counters() -> Counters:
    """How many children were started, programs sent to them, and answers taken from the cache."""
    with _lock:
        return Counters(_counts[0], _counts[1], _counts[2])


def run(program: str, input_json: str) -> list[Any]:
    """The results of jq `program` on the JSON text `input_json`, as a list of values.

    The program runs in a child process limited to `CPU_SECONDS` of CPU time and `MEMORY_BYTES`
    of memory, answered within `WALL_SECONDS`. A program that does not compile, fails, overruns
    a limit or crashes libjq raises `TemplateError` saying which and what to do about it; the
    calling process is never at risk. Check a program for builtins that reach outside its input
    (`env`, `now`, ...) before calling this: the child does not refuse them.
    """
    request = _frame(program.encode("utf-8", "surrogatepass"), input_json.encode("utf-8"))
    key = hashlib.sha256(request).digest()
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            _counts[2] += 1
    if cached is None:
        cached = _ask(request, program)
        _remember(key, cached)
    kind, body = cached
    if kind == "ok":
        results: list[Any] = json.loads(body)
        return results
    raise TemplateError(_message(program, kind, body.decode("utf-8", "replace")))


# --- the parent's side ------------------------------------------------------------------------------


class _Overran(Exception):
    """The child did not answer in time and was killed."""


class _Died(Exception):
    """The child ended without answering."""

    def __init__(self, returncode: int | None, stderr: bytes) -> None:
        super().__init__(returncode)
        self.returncode = returncode
        self.stderr = stderr


class _Child:
    """One child process serving programs one at a time."""

    def __init__(self) -> None:
        # start_new_session: a Ctrl-C meant for the parent's terminal does not reach the child;
        # the child ends by itself when its standard input closes with the parent.
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT, _ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_child_environment(),
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
        self.owner = os.getpid()
        self.requests = 0
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            assert stream is not None
            os.set_blocking(stream.fileno(), False)

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.process.poll() is None

    def exchange(self, request: bytes, deadline: float) -> tuple[str, bytes]:
        """Send one request and read its answer; raise `_Overran` or `_Died`."""
        process = self.process
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        self.requests += 1
        pending = memoryview(request)
        answer = bytearray()
        stderr = bytearray()
        need: int | None = None
        kind = ""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdin, selectors.EVENT_WRITE)
            selector.register(process.stdout, selectors.EVENT_READ)
            selector.register(process.stderr, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Overran()
                for key, _ in selector.select(remaining):
                    fd = key.fd
                    if key.fileobj is process.stdin:
                        try:
                            written = os.write(fd, pending)
                        except BrokenPipeError:
                            raise _Died(_ended(process, deadline), bytes(stderr)) from None
                        pending = pending[written:]
                        if not pending:
                            selector.unregister(process.stdin)
                        continue
                    chunk = os.read(fd, 1 << 16)
                    if key.fileobj is process.stderr:
                        if not chunk:
                            selector.unregister(process.stderr)
                        stderr += chunk
                        del stderr[:-_STDERR_TAIL]
                        continue
                    if not chunk:
                        raise _Died(_ended(process, deadline), bytes(stderr))
                    answer += chunk
                    if need is None and b"\n" in answer:
                        header, _, rest = bytes(answer).partition(b"\n")
                        kind, _, size = header.decode("ascii").partition(" ")
                        need = int(size)
                        answer = bytearray(rest)
                    if need is not None and len(answer) >= need:
                        return kind, bytes(answer[:need])

    def stop(self) -> None:
        """End the child now (it may be in the middle of a program)."""
        try:
            self.process.kill()
        except OSError:
            pass
        self._reap()

    def close(self) -> None:
        """Let an idle child end by closing its input."""
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=1)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
        self._reap()

    def _reap(self) -> None:
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self.owner == os.getpid():
            self.process.wait()


def _ended(process: subprocess.Popen[bytes], deadline: float) -> int | None:
    """The exit status of a child that closed its output, or None if it would not end."""
    try:
        return process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        return None


def _child_environment() -> dict[str, str]:
    # Only what an interpreter needs: the worker's environment holds the database URL and secrets.
    # TZ: jq's date builtins then mean the same on every host. LC_CTYPE: what Python would set
    # itself in a C locale (PEP 538), stated here so that every child starts alike.
    return {"PATH": os.environ.get("PATH", os.defpath), "TZ": "UTC", "LC_CTYPE": "C.UTF-8"}


_lock = threading.Lock()
_slots = threading.BoundedSemaphore(MAX_CHILDREN)
_idle: list[_Child] = []
_cache: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()
_cache_size = [0]
_counts = [0, 0, 0]  # children started, programs run, cache hits


def _frame(program: bytes, input_json: bytes) -> bytes:
    return f"{len(program)} {len(input_json)}\n".encode("ascii") + program + input_json


def _ask(request: bytes, program: str) -> tuple[str, bytes]:
    """Run one request in a child from the pool; the answer as (kind, body)."""
    if not _slots.acquire(timeout=SLOT_WAIT_SECONDS):
        raise TemplateError(
            f"{_name(program)} could not start: {MAX_CHILDREN} jq programs were already running "
            f"for {SLOT_WAIT_SECONDS:.0f} s; try again"
        )
    try:
        deadline = time.monotonic() + WALL_SECONDS
        child = _take()
        try:
            answer = child.exchange(request, deadline)
        except _Overran:
            child.stop()
            return "wall", b""
        except _Died as died:
            child.stop()
            return _death(died)
        except BaseException:
            # An interrupt or a cancellation in the middle of an exchange leaves the child's
            # pipes in an unknown state: never reuse it.
            child.stop()
            raise
        _give_back(child)
        return answer
    finally:
        _slots.release()


def _take() -> _Child:
    with _lock:
        _counts[1] += 1
        while _idle:
            child = _idle.pop()
            if child.alive():
                return child
            child.stop()
        _counts[0] += 1
    return _Child()


def _give_back(child: _Child) -> None:
    with _lock:
        if child.requests < MAX_REQUESTS_PER_CHILD and len(_idle) < MAX_IDLE:
            _idle.append(child)
            return
    child.close()


def _death(died: _Died) -> tuple[str, bytes]:
    """Why a child ended without answering, from its exit status and the end of its stderr."""
    returncode = died.returncode
    if b"cannot allocate memory" in died.stderr:
        # libjq prints this and aborts when an allocation fails
        return "memory", b""
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "cpu", b""
    if returncode is not None and returncode < 0:
        detail = signal.Signals(-returncode).name
    else:
        detail = f"exit status {returncode}"
    last = died.stderr.decode("utf-8", "replace").strip().splitlines()
    if last:
        detail += f": {last[-1][:200]}"
    return "crash", detail.encode("utf-8")


def _remember(key: bytes, answer: tuple[str, bytes]) -> None:
    # Results and jq's own errors depend only on the program and its input. Overruns depend on
    # the machine as well (and a crash may be the machine's), so they are evaluated again.
    kind, body = answer
    if kind not in ("ok", "compile", "error", "large") or len(body) > MAX_CACHED_ANSWER:
        return
    with _lock:
        if key in _cache:
            return
        _cache[key] = answer
        _cache_size[0] += len(body) + len(key)
        while len(_cache) > CACHE_ENTRIES or _cache_size[0] > CACHE_BYTES:
            old_key, (_, old_body) = _cache.popitem(last=False)
            _cache_size[0] -= len(old_body) + len(old_key)


def _name(program: str) -> str:
    text = program if len(program) <= _EXCERPT else program[:_EXCERPT] + "..."
    return f"jq {text!r}"


def _message(program: str, kind: str, detail: str) -> str:
    name = _name(program)
    if kind == "compile":
        return f"{name} does not compile: {detail}"
    if kind == "error":
        return f"{name} failed: {detail}"
    if kind == "large":
        return (
            f"{name} produced more than {MAX_RESULT_BYTES // (1024 * 1024)} MB of results; "
            "select or aggregate what you need inside the program"
        )
    if kind == "memory":
        return (
            f"{name} used more than {MEMORY_BYTES // (1024 * 1024)} MB of memory; it probably "
            "recurses without end (a `def` that calls itself with no base case) or builds a huge "
            "value: bound it"
        )
    if kind == "cpu":
        return (
            f"{name} ran longer than {CPU_SECONDS} s of CPU time; it probably never ends "
            "(`until`, `repeat`, `range` over a huge count, recursion): bound it"
        )
    if kind == "wall":
        return (
            f"{name} ran longer than {WALL_SECONDS:g} s; it probably never ends "
            "(`until`, `repeat`, `range` over a huge count, recursion): bound it"
        )
    return f"{name} crashed jq ({detail}); simplify the program"


def _close_idle() -> None:
    with _lock:
        children = list(_idle)
        _idle.clear()
    for child in children:
        child.close()


def _forget_after_fork() -> None:
    # A forked process shares its parent's children's pipes: it must start its own.
    global _lock, _slots
    _lock = threading.Lock()
    _slots = threading.BoundedSemaphore(MAX_CHILDREN)
    _idle.clear()


atexit.register(_close_idle)
os.register_at_fork(after_in_child=_forget_after_fork)


# --- the child's side -------------------------------------------------------------------------------


def serve_child() -> None:
    """The child's loop: limit this process, then answer requests until standard input closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    import jq  # type: ignore[import-not-found,unused-ignore]

    read, write = sys.stdin.buffer, sys.stdout.buffer
    programs: OrderedDict[str, Any] = OrderedDict()
    while True:
        header = read.readline()
        if not header:
            return
        program_size, input_size = (int(n) for n in header.split())
        program = read.read(program_size).decode("utf-8", "surrogatepass")
        text = read.read(input_size).decode("utf-8")
        _limit_cpu()
        kind, body = _evaluate(jq, programs, program, text)
        write.write(f"{kind} {len(body)}\n".encode("ascii") + body)
        write.flush()


def _limit_cpu() -> None:
    # RLIMIT_CPU counts the whole life of the process: allow CPU_SECONDS more from now on. The
    # kernel ends the process with SIGXCPU past the soft limit, even inside libjq.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + CPU_SECONDS
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _evaluate(
    jq: Any, programs: OrderedDict[str, Any], program: str, text: str
) -> tuple[str, bytes]:
    compiled = programs.get(program)
    if compiled is None:
        try:
            compiled = jq.compile(program)
        except MemoryError:
            return "memory", b""
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            return "compile", (lines[0] if lines else "invalid program").encode("utf-8")
        programs[program] = compiled
        if len(programs) > 256:
            programs.popitem(last=False)
    parts: list[str] = []
    size = 2
    try:
        for value in compiled.input_text(text):
            part = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            size += len(part) + 1
            if size > MAX_RESULT_BYTES:
                return "large", b""
            parts.append(part)
        return "ok", ("[" + ",".join(parts) + "]").encode("utf-8")
    except MemoryError:
        return "memory", b""
    except Exception as exc:
        return "error", (str(exc).strip() or type(exc).__name__).encode("utf-8", "replace")
