"""Every event type Tiercel records. One frozen struct per type; a recorded event's meaning never
changes: new information arrives as a new type or a new optional field.

Streams:
- ``flow:<namespace>/<flowId>``: a flow's revisions.
- ``exec:<executionId>``: an execution, written by the API, the executor and the timer service.
- ``exec:<executionId>/a:<taskRunId>:<attempt>``: one task-run attempt, written by the worker that
  claimed it (and by the watchdog when that worker is lost).
- ``worker:<workerId>``: a worker's life and heartbeats.
- ``kv:<namespace>/<key>``: one key of a namespace's KV store.
- ``concurrency:<namespace>/<flowId>``: the slots of a flow's concurrency limit.
- ``secret:<namespace>/<key>``: changes to one secret of a namespace (never its value).
- ``user:<username>``, ``token:<tokenId>``: accounts and API tokens.
- ``login:<principal>``: logins and refused credentials.
- ``trigger:<namespace>/<flowId>/<triggerId>``: a trigger's state (toggles, fired ticks).
- ``bulk:<jobId>``: a bulk operation on executions (its selection, progress and outcomes).
- ``dashboard:<dashboardId>``: a custom dashboard's YAML source, each save and its deletion.
- ``projection:<name>``: rebuilds of a read model asked for through the API, and their ends.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Event(
    msgspec.Struct, frozen=True, tag=True, tag_field="type", kw_only=True, omit_defaults=True
):
    """Base of all events; the tag (the `type` column) is the class name."""


# --- flows -----------------------------------------------------------------------------------


class FlowCreated(Event, frozen=True):
    """The first revision of a flow was deployed."""

    namespace: str
    flowId: str
    revision: int
    source: str


class FlowUpdated(Event, frozen=True):
    """A new revision of a flow was deployed."""

    namespace: str
    flowId: str
    revision: int
    source: str


class FlowDeleted(Event, frozen=True):
    """The flow was deleted; its revisions stay readable."""

    namespace: str
    flowId: str
    revision: int


# --- executions --------------------------------------------------------------------------------


class ExecutionCreated(Event, frozen=True):
    """An execution was requested; it pins the flow revision it runs (as its parsed definition)."""

    executionId: str
    namespace: str
    flowId: str
    flowRevision: int
    flow: dict[str, Any]
    flowUri: str | None = None
    """Where the value above is kept when it was too large for an event (it is then empty)."""
    inputs: dict[str, Any] = {}
    inputsUri: str | None = None
    """Where the value above is kept when it was too large for an event (it is then empty)."""
    labels: list[dict[str, str]] = []
    trigger: dict[str, Any] | None = None
    parentId: str | None = None
    originalId: str | None = None
    parentTaskRunId: str | None = None
    """The Subflow task run of `parentId` that started this execution."""
    attempt: int = 1
    """Which try of the flow this is (retries with CREATE_NEW_EXECUTION count up)."""
    concurrencyLimited: bool = False
    """The flow's concurrency limit applies: the execution runs once the flow's ledger grants
    it a slot (executions recorded before limits were enforced started at once)."""
    rules: int = 0
    """The edition of the executor's decision rules the execution was created under
    (`engine.execution.planner.RULES`): where a rule changed, an execution recorded before
    keeps being decided, and replayed by `sys verify`, as it was."""
    replayOf: str | None = None
    """The execution this one replays (`POST /api/v1/executions/{id}/replay`)."""
    replayTaskRunId: str | None = None
    """The task run of `replayOf` the replay runs again from (none: from the start)."""
    taskRuns: list[dict[str, Any]] = []
    """The task runs of `replayOf` a replay keeps, as they ended there (each a
    `ReplayedTaskRun`, with ids derived for this execution): the execution starts from them,
    as if it had run them itself."""
    taskRunsUri: str | None = None
    """Where the value above is kept when it was too large for an event (it is then empty)."""


class ExecutionStateChanged(Event, frozen=True):
    """The execution moved to `state`; a terminal one carries the flow's outputs."""

    executionId: str
    state: str
    outputs: dict[str, Any] | None = None
    outputsUri: str | None = None
    """Where the value above is kept when it was too large for an event (it is then empty)."""
    message: str | None = None
    """Why, when the engine ended it for a reason of its own (a flow it cannot run, a bug)."""


class ExecutionKillRequested(Event, frozen=True):
    """Someone asked to kill the execution."""

    executionId: str


class TaskRunCreated(Event, frozen=True):
    """A task run exists now; `value` is the iteration value inside a loop."""

    executionId: str
    taskRunId: str
    taskId: str
    parentTaskRunId: str | None = None
    value: str | None = None
    iteration: int | None = None
    """The round of a repeating parent (WaitFor) this run belongs to."""


class TaskRunStateChanged(Event, frozen=True):
    """A task run moved to `state` (flowable tasks, timers and resolved failures)."""

    executionId: str
    taskRunId: str
    state: str
    outputs: dict[str, Any] | None = None
    outputsUri: str | None = None
    """Where the value above is kept when it was too large for an event (it is then empty)."""
    message: str | None = None


class ExecutionPurged(Event, frozen=True):
    """The execution's read models (and, when asked, its logs and files) were deleted; its
    events stay as the audit trail."""

    executionId: str
    logs: bool = True
    files: bool = True


class LogsPurged(Event, frozen=True):
    """Log lines matching these filters, recorded before this event, were deleted from the logs
    read model (a maintenance task); the events that logged them stay. An empty filter
    matches everything."""

    namespace: str | None = None
    """The namespace, and those under it (`a.b` matches `a.b.c`), unless `flowId` is given."""
    flowId: str | None = None
    executionIds: list[str] = []
    levels: list[str] = []
    startDate: str | None = None
    """Lines logged at or after this time (ISO-8601)."""
    endDate: str | None = None
    """Lines logged before this time (ISO-8601)."""


class TaskRunRestarted(Event, frozen=True):
    """A failed flowable task run is retried: its children start over."""

    executionId: str
    taskRunId: str


class ExecutionRetried(Event, frozen=True):
    """The failed execution is tried again as a new execution (retry CREATE_NEW_EXECUTION)."""

    executionId: str
    newExecutionId: str
    attempt: int


class ExecutionLabelsChanged(Event, frozen=True):
    """The execution's labels were set at run time (all of them, as they now are)."""

    executionId: str
    labels: list[dict[str, str]]


class ExecutionResumeRequested(Event, frozen=True):
    """Someone resumed a paused execution, with the values its Pause task asked for."""

    executionId: str
    inputs: dict[str, Any] = {}
    taskRunIds: list[str] = []
    """The paused task runs this request resumes (older events: every paused one)."""


class SubflowExecutionRequested(Event, frozen=True):
    """A Subflow task run asks for a child execution (the executor's shell creates it)."""

    executionId: str
    taskRunId: str
    childId: str
    namespace: str
    flowId: str
    revision: int | None = None
    inputs: dict[str, Any] = {}
    inputsUri: str | None = None
    """Where the value above is kept when it was too large for an event (it is then empty)."""
    labels: list[dict[str, str]] = []
    wait: bool = True


class SubflowExecutionEnded(Event, frozen=True):
    """A child execution of a Subflow task run ended (or could not start: `message` says why)."""

    executionId: str
    taskRunId: str
    childId: str
    state: str
    outputs: dict[str, Any] | None = None
    outputsUri: str | None = None
    """Where the value above is kept when it was too large for an event (it is then empty)."""
    message: str | None = None


class AttemptScheduled(Event, frozen=True):
    """An attempt of a runnable task run is ready for a worker.

    It only names the attempt (and the task's type, so workers can pick what they run): the
    worker reads the task's definition and the variables it renders with from the execution's
    history as it stood at this event.
    """

    executionId: str
    taskRunId: str
    attempt: int
    taskId: str = ""
    taskType: str = ""
    task: dict[str, Any] = {}
    """Older events embedded the task's definition; new ones leave it out."""
    context: dict[str, Any] = {}
    """Older events embedded the render context; new ones leave it out."""


class TimerScheduled(Event, frozen=True):
    """The executor wants to be woken at `fireAt` (ISO-8601)."""

    executionId: str
    timerId: str
    fireAt: str
    taskRunId: str | None = None


class TimerFired(Event, frozen=True):
    """A scheduled timer came due, or, with `attemptEnded`, has nothing left to do."""

    executionId: str
    timerId: str
    attemptEnded: bool = False
    """Recorded by the executor for the timer of a task's `timeout` once the attempt it timed
    ended (on its own, or failed by the timeout): nothing is left for it to fire."""


# --- attempts (written by workers) --------------------------------------------------------------


class AttemptClaimed(Event, frozen=True):
    """A worker took the attempt; no other worker may run it."""

    executionId: str
    taskRunId: str
    attempt: int
    workerId: str


class AttemptLogged(Event, frozen=True):
    """Log lines of an attempt: each is {timestamp, level, message}."""

    executionId: str
    taskRunId: str
    taskId: str
    attempt: int
    lines: list[dict[str, Any]]


class AttemptSucceeded(Event, frozen=True):
    """The attempt ended in SUCCESS or WARNING with these outputs."""

    executionId: str
    taskRunId: str
    attempt: int
    state: str = "SUCCESS"
    outputs: dict[str, Any] = {}
    outputsUri: str | None = None
    """Where the value above is kept when it was too large for an event (it is then empty)."""
    metrics: list[dict[str, Any]] = []
    """Metrics the task reported: {name, type (counter|timer), value, tags}."""
    workingDirectoryFiles: dict[str, str] = {}
    """Files of a WorkingDirectory's `outputFiles` as they stood after this attempt."""


class AttemptFailed(Event, frozen=True):
    """The attempt failed; `message` says why."""

    executionId: str
    taskRunId: str
    attempt: int
    message: str
    outputs: dict[str, Any] = {}
    outputsUri: str | None = None
    """Where the value above is kept when it was too large for an event (it is then empty)."""
    metrics: list[dict[str, Any]] = []


class AttemptKilled(Event, frozen=True):
    """The worker stopped a running attempt because its execution or task run was killed."""

    executionId: str
    taskRunId: str
    attempt: int
    reason: str = ""


class AttemptAbandoned(Event, frozen=True):
    """The worker holding the attempt was lost; the attempt will not report."""

    executionId: str
    taskRunId: str
    attempt: int
    reason: str


# --- concurrency limits -------------------------------------------------------------------------
# A flow's ledger (`concurrency_stream`) says who holds a slot and who waits; the outcome for
# one execution is also recorded in its own stream, as an input of the executor.


class ConcurrencySlotGranted(Event, frozen=True):
    """The execution holds a slot of its flow's concurrency limit: it may run (in an
    execution's stream)."""

    executionId: str
    forced: bool = False
    """Started by hand (`sys submit-queued`), whatever the limit."""


class ConcurrencyLimitReached(Event, frozen=True):
    """The execution arrived while its flow's concurrency limit was reached: `behavior` says
    what follows (QUEUE: it waits; CANCEL, FAIL: it ends so, saying `message`)."""

    executionId: str
    limit: int
    behavior: str
    message: str | None = None


class ConcurrencySlotTaken(Event, frozen=True):
    """An execution took a slot of the flow's limit (in the flow's ledger)."""

    namespace: str
    flowId: str
    executionId: str
    forced: bool = False


class ConcurrencyQueued(Event, frozen=True):
    """An execution waits for a slot, behind those queued before it (in the flow's ledger)."""

    namespace: str
    flowId: str
    executionId: str
    limit: int


class ConcurrencyRefused(Event, frozen=True):
    """An execution was refused a slot and will not run (behavior CANCEL or FAIL)."""

    namespace: str
    flowId: str
    executionId: str


class ConcurrencySlotReleased(Event, frozen=True):
    """An execution that held a slot, or waited for one, ended in `state`."""

    namespace: str
    flowId: str
    executionId: str
    state: str


def concurrency_stream(namespace: str, flow_id: str) -> str:
    """The ledger of a flow's concurrency limit."""
    return f"concurrency:{namespace}/{flow_id}"


# --- key-value store -------------------------------------------------------------------------


class KVSet(Event, frozen=True):
    """A key of a namespace's KV store was set (to any JSON value)."""

    namespace: str
    key: str
    value: Any = None
    expiresAt: str | None = None
    """When the value stops being readable (ISO-8601, UTC); never when absent."""
    kvType: str | None = None
    """The value's Kestra type (STRING, NUMBER, BOOLEAN, DATETIME, DATE, DURATION, JSON) when
    the writer said it; read from the value's JSON type when absent."""
    description: str | None = None


class KVDeleted(Event, frozen=True):
    """A key of a namespace's KV store was deleted."""

    namespace: str
    key: str


# --- triggers --------------------------------------------------------------------------------


class TriggerToggled(Event, frozen=True):
    """A flow's trigger was enabled or disabled at run time (the scheduler honors the last)."""

    namespace: str
    flowId: str
    triggerId: str
    enabled: bool
    reason: str | None = None
    """Why, when the scheduler disabled it (`stopAfter`); absent when a person toggled it."""


class TriggerFired(Event, frozen=True):
    """A tick of a trigger fired: the scheduler that appended this (at the trigger stream's
    expected version, so only one scheduler can) created `executionId` in the same commit."""

    namespace: str
    flowId: str
    triggerId: str
    date: str
    """The tick (ISO-8601, in the trigger's time zone)."""
    next: str | None = None
    """The tick after it, as the scheduler computed it then."""
    executionId: str | None = None
    """The execution started; absent when none could be (see `error`)."""
    error: str | None = None
    """Why no execution was started for this tick (bad inputs, a template that failed)."""
    backfill: bool = False
    """Whether the tick was fired by a backfill rather than on time."""


class TriggerPolled(Event, frozen=True):
    """A polling trigger's poll at `date` was taken by one scheduler (appended at the trigger
    stream's expected version before the poll runs, so no other scheduler makes it)."""

    namespace: str
    flowId: str
    triggerId: str
    date: str
    """When the poll was made (ISO-8601, UTC)."""


class TriggerSkipped(Event, frozen=True):
    """Ticks of a trigger up to `date` were passed over without starting executions (missed
    while no scheduler ran, with `recoverMissedSchedules` LAST or NONE)."""

    namespace: str
    flowId: str
    triggerId: str
    date: str
    """The last tick passed over (ISO-8601, in the trigger's time zone)."""
    count: int = 1
    """How many ticks were passed over."""
    reason: str | None = None


class TriggerConditionMet(Event, frozen=True):
    """One condition of a Flow trigger's `MultipleCondition` (or one entry of its
    `preconditions`) was met by an execution that ended; the trigger fires once every condition
    is met within its time window."""

    namespace: str
    flowId: str
    triggerId: str
    condition: str
    """The MultipleCondition's (or the preconditions') id."""
    key: str
    """Which of its conditions was met (its key, or the upstream flow / `where` id)."""
    executionId: str
    """The execution that met it."""
    date: str
    """When that execution ended (ISO-8601, UTC): the window is judged from it."""


class BackfillStarted(Event, frozen=True):
    """A backfill of a scheduled trigger was asked for: one execution per tick from `start`
    (included) to `end` (excluded), fired by the scheduler at its own pace."""

    namespace: str
    flowId: str
    triggerId: str
    backfillId: str
    start: str
    end: str
    total: int
    """How many ticks the backfill fires."""
    inputs: dict[str, Any] = {}
    labels: list[dict[str, str]] = []


class BackfillPaused(Event, frozen=True):
    """The running backfill of a trigger was paused: no tick of it fires until it resumes."""

    namespace: str
    flowId: str
    triggerId: str
    backfillId: str


class BackfillResumed(Event, frozen=True):
    """A paused backfill goes on."""

    namespace: str
    flowId: str
    triggerId: str
    backfillId: str


class BackfillEnded(Event, frozen=True):
    """A backfill fired its last tick (or was cancelled)."""

    namespace: str
    flowId: str
    triggerId: str
    backfillId: str
    fired: int
    cancelled: bool = False


def trigger_stream(namespace: str, flow_id: str, trigger_id: str) -> str:
    """The stream of one trigger's state changes."""
    return f"trigger:{namespace}/{flow_id}/{trigger_id}"


# --- secrets ---------------------------------------------------------------------------------
# The values live encrypted in the `namespace_secrets` table, where they can be erased; the
# events only say who changed which key.


class SecretSet(Event, frozen=True):
    """A secret of a namespace was stored or replaced (its value is never in the event)."""

    namespace: str
    key: str


class SecretDeleted(Event, frozen=True):
    """A secret of a namespace was deleted."""

    namespace: str
    key: str


def secret_stream(namespace: str, key: str) -> str:
    """The stream of the changes to one secret of a namespace."""
    return f"secret:{namespace}/{key}"


# --- accounts ------------------------------------------------------------------------------------


class UserCreated(Event, frozen=True):
    """An account was created; `passwordHash` is an argon2 hash, never the password."""

    username: str
    passwordHash: str
    role: str
    namespaces: list[str] = []
    """Namespaces (and their children) the user may reach; every namespace when empty."""


class UserUpdated(Event, frozen=True):
    """An account's password, role or namespaces changed (absent fields did not change)."""

    username: str
    passwordHash: str | None = None
    role: str | None = None
    namespaces: list[str] | None = None


class UserRevoked(Event, frozen=True):
    """An account was disabled: its password and its tokens no longer authenticate."""

    username: str


class TokenCreated(Event, frozen=True):
    """An API token was issued; only a SHA-256 hash of its secret part is kept."""

    tokenId: str
    name: str
    secretHash: str
    role: str
    namespaces: list[str] = []
    owner: str | None = None
    """The user it acts for (its role is capped by theirs), if any."""
    expiresAt: str | None = None


class TokenRevoked(Event, frozen=True):
    """An API token was revoked and no longer authenticates."""

    tokenId: str


class LoginSucceeded(Event, frozen=True):
    """Credentials were accepted (recorded once per principal, method and source a while)."""

    principal: str
    method: str
    source: str = ""


class LoginRefused(Event, frozen=True):
    """Credentials were refused; `count` requests were refused alike since the last event."""

    principal: str
    method: str
    reason: str
    source: str = ""
    count: int = 1


def user_stream(username: str) -> str:
    """The stream of one account."""
    return f"user:{username}"


def token_stream(token_id: str) -> str:
    """The stream of one API token."""
    return f"token:{token_id}"


def login_stream(principal: str) -> str:
    """The stream of logins and refusals of one principal (as given, for refusals)."""
    return f"login:{principal}"


# --- workers -------------------------------------------------------------------------------------


class WorkerHeartbeat(Event, frozen=True):
    """A worker is alive."""

    workerId: str
    hostname: str = ""


class WorkerStopped(Event, frozen=True):
    """A worker shut down cleanly."""

    workerId: str


class WorkerLost(Event, frozen=True):
    """A worker stopped heartbeating; its open attempts are abandoned."""

    workerId: str


# --- bulk operations -----------------------------------------------------------------------------


class BulkJobSubmitted(Event, frozen=True):
    """A bulk operation on executions was asked for; its items follow in `BulkItemsSelected`
    events of the same append (in chunks, so that no event is large)."""

    jobId: str
    action: str
    """replay, restart, kill, delete, labels or state."""
    selection: dict[str, Any]
    """How the items were chosen, as asked (`ids`, or `query` / `filters`)."""
    total: int
    """How many items the selection resolved to (those in `skipped` excluded)."""
    params: dict[str, Any] = {}
    """What the action takes (labels, state, ...)."""
    requestId: str | None = None
    chunkSize: int = 100
    rate: float = 0.0
    """Items per second at most (0: the runner's default)."""
    skipped: dict[str, str] = {}
    """Items of the selection refused at submission (not found, out of the caller's
    namespaces), with why."""
    namespaces: list[str] = []
    """The namespaces of the items: who may see and steer the job must reach all of them."""


class BulkItemsSelected(Event, frozen=True):
    """One chunk of a bulk job's items, in the order they are worked."""

    jobId: str
    chunk: int
    itemIds: list[str]


class BulkItemsDone(Event, frozen=True):
    """What became of the items of one chunk: `ok` maps an item to what it gave (a replay's
    new execution id, or empty), `failed` to why it failed."""

    jobId: str
    chunk: int
    ok: dict[str, str] = {}
    failed: dict[str, str] = {}


class BulkJobPaused(Event, frozen=True):
    """Work on a bulk job stopped until it is resumed."""

    jobId: str


class BulkJobResumed(Event, frozen=True):
    """Work on a paused or cancelled bulk job goes on from where it stopped."""

    jobId: str


class BulkJobCancelled(Event, frozen=True):
    """Work on a bulk job stopped for good unless it is resumed; what is done stays done."""

    jobId: str


class BulkJobEnded(Event, frozen=True):
    """Every item of a bulk job was worked."""

    jobId: str
    done: int
    failed: int


def bulk_stream(job_id: str) -> str:
    """The stream of one bulk job."""
    return f"bulk:{job_id}"


# --- dashboards ----------------------------------------------------------------------------------


class DashboardCreated(Event, frozen=True):
    """A custom dashboard was saved for the first time (or again after its deletion)."""

    dashboardId: str
    title: str
    source: str


class DashboardUpdated(Event, frozen=True):
    """A custom dashboard's YAML source was replaced."""

    dashboardId: str
    title: str
    source: str


class DashboardDeleted(Event, frozen=True):
    """A custom dashboard was deleted; its earlier sources stay in its stream."""

    dashboardId: str


def dashboard_stream(dashboard_id: str) -> str:
    """The stream of one custom dashboard."""
    return f"dashboard:{dashboard_id}"


# --- projections -----------------------------------------------------------------------------


class ProjectionRebuildRequested(Event, frozen=True):
    """Someone asked the API to rebuild a read model from position 0 (`tiercel sys reindex`)."""

    projection: str


class ProjectionRebuilt(Event, frozen=True):
    """A rebuild asked for through the API swapped its new tables in at `position`."""

    projection: str
    position: int
    seconds: float


class ProjectionRebuildFailed(Event, frozen=True):
    """A rebuild asked for through the API ended before its swap; the live tables still serve."""

    projection: str
    message: str
    cancelled: bool = False
    """True when the server stopped while it ran."""


def projection_stream(projection: str) -> str:
    """The stream of the rebuilds of one projection."""
    return f"projection:{projection}"


# --- actions on one execution: replay, restart, pause, a task run's state --------------------
# Commands of users (and bulk jobs), recorded in the execution's stream as inputs of the
# executor, which decides what follows from them.


class ReplayedAttempt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One attempt of a task run a replay keeps."""

    state: str
    workerId: str | None = None
    histories: list[tuple[str, str]] = []


class ReplayedTaskRun(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A task run a replay keeps from the execution it replays, as it stood there (an item
    of `ExecutionCreated.taskRuns`)."""

    id: str
    taskId: str
    parentTaskRunId: str | None = None
    value: str | None = None
    iteration: int | None = None
    state: str
    histories: list[tuple[str, str]] = []
    """Its states with their dates, as recorded in the original execution."""
    outputs: dict[str, Any] | None = None
    attempts: list[ReplayedAttempt] = []
    message: str | None = None
    restarts: int = 0
    files: dict[str, str] = {}
    subflow: list[str] = []
    """The child execution of a Subflow task run (id, and its state once ended)."""
    subflowOutputs: dict[str, Any] | None = None


class ExecutionReplayed(Event, frozen=True):
    """Someone replayed this ended execution as `newExecutionId` (from `taskRunId`, on
    `revision`, when given)."""

    executionId: str
    newExecutionId: str
    taskRunId: str | None = None
    revision: int | None = None
    reason: str | None = None


class ExecutionRestarted(Event, frozen=True):
    """Someone restarted this ended execution: `taskRunIds` run again (a runnable one as a new
    attempt), their flowable parents `reopened` go on, and the task runs `removed` (of the
    errors, finally and afterExecution branches, run for the outcome that is undone) are set
    aside, to run again if the new outcome calls for them."""

    executionId: str
    taskRunIds: list[str]
    reopened: list[str] = []
    removed: list[str] = []
    reason: str | None = None


class TaskRunStateForced(Event, frozen=True):
    """Someone set an ended task run's state by hand (Kestra's "change status"): the execution
    goes on from there (`reopened` and `removed` as in `ExecutionRestarted`; an ended execution
    runs again)."""

    executionId: str
    taskRunId: str
    state: str
    reopened: list[str] = []
    removed: list[str] = []
    reason: str | None = None


class ExecutionPauseRequested(Event, frozen=True):
    """Someone paused the running execution: no task run starts until it is resumed."""

    executionId: str
    reason: str | None = None


AnyEvent = (
    FlowCreated
    | FlowUpdated
    | FlowDeleted
    | ExecutionCreated
    | ExecutionStateChanged
    | ExecutionKillRequested
    | TaskRunCreated
    | TaskRunStateChanged
    | ExecutionLabelsChanged
    | TaskRunRestarted
    | ExecutionPurged
    | LogsPurged
    | ExecutionRetried
    | ExecutionResumeRequested
    | SubflowExecutionRequested
    | SubflowExecutionEnded
    | AttemptScheduled
    | TimerScheduled
    | TimerFired
    | AttemptClaimed
    | AttemptLogged
    | AttemptSucceeded
    | AttemptFailed
    | AttemptAbandoned
    | AttemptKilled
    | WorkerHeartbeat
    | WorkerStopped
    | WorkerLost
    | ConcurrencySlotGranted
    | ConcurrencyLimitReached
    | ConcurrencySlotTaken
    | ConcurrencyQueued
    | ConcurrencyRefused
    | ConcurrencySlotReleased
    | KVSet
    | KVDeleted
    | TriggerToggled
    | TriggerFired
    | TriggerSkipped
    | TriggerPolled
    | TriggerConditionMet
    | BackfillStarted
    | BackfillPaused
    | BackfillResumed
    | BackfillEnded
    | SecretSet
    | SecretDeleted
    | UserCreated
    | UserUpdated
    | UserRevoked
    | TokenCreated
    | TokenRevoked
    | LoginSucceeded
    | LoginRefused
    | BulkJobSubmitted
    | BulkItemsSelected
    | BulkItemsDone
    | BulkJobPaused
    | BulkJobResumed
    | BulkJobCancelled
    | BulkJobEnded
    | DashboardCreated
    | DashboardUpdated
    | DashboardDeleted
    | ProjectionRebuildRequested
    | ProjectionRebuilt
    | ProjectionRebuildFailed
    | ExecutionReplayed
    | ExecutionRestarted
    | TaskRunStateForced
    | ExecutionPauseRequested
)

LARGE_VALUES: dict[type[Event], tuple[str, ...]] = {
    ExecutionCreated: ("flow", "inputs", "taskRuns"),
    ExecutionStateChanged: ("outputs",),
    TaskRunStateChanged: ("outputs",),
    SubflowExecutionRequested: ("inputs",),
    SubflowExecutionEnded: ("outputs",),
    AttemptSucceeded: ("outputs",),
    AttemptFailed: ("outputs",),
}
"""Fields that may hold large values: above a size limit the store keeps such a value in
internal storage and the event carries its URI in `<field>Uri` instead."""

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    """The event as JSON bytes, `type` included."""
    return _encoder.encode(event)


def decode(data: bytes | str) -> AnyEvent:
    """An event from its JSON (the `data` column)."""
    return _decoder.decode(data)


def type_name(event: Event) -> str:
    """The `type` column of the event."""
    return type(event).__name__


def execution_stream(execution_id: str) -> str:
    """The stream of one execution."""
    return f"exec:{execution_id}"


def attempt_stream(execution_id: str, task_run_id: str, attempt: int) -> str:
    """The stream of one task-run attempt (a sub-stream of its execution's)."""
    return f"exec:{execution_id}/a:{task_run_id}:{attempt}"


def flow_stream(namespace: str, flow_id: str) -> str:
    """The stream of a flow's revisions."""
    return f"flow:{namespace}/{flow_id}"


def worker_stream(worker_id: str) -> str:
    """The stream of one worker."""
    return f"worker:{worker_id}"


def purge_stream(task_run_id: str, attempt: int) -> str:
    """The stream of what one attempt of a purge task recorded (once, however often it runs)."""
    return f"purge:{task_run_id}/{attempt}"


def kv_stream(namespace: str, key: str) -> str:
    """The stream of one key of a namespace's KV store."""
    return f"kv:{namespace}/{key}"
