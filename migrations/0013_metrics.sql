-- The metrics read model (projections/metrics.py): every metric point tasks report, the built-in
-- durations, and an hourly rollup that keeps aggregates over months a read of a few rows.

-- One row per point. `value` is in Kestra's unit: a counter as reported, a timer in whole
-- milliseconds. (seq, idx) is the point's origin: the position of the event it came with and
-- its place in the event's `metrics` list (-1 for the built-in duration), so a replayed event
-- inserts nothing twice.
CREATE TABLE metrics (
    seq           bigint NOT NULL,
    idx           integer NOT NULL,
    execution_id  text NOT NULL,
    namespace     text,
    flow_id       text,
    task_id       text,
    task_run_id   text,
    attempt       integer,
    name          text NOT NULL,
    type          text NOT NULL CHECK (type IN ('counter', 'timer')),
    value         double precision NOT NULL,
    tags          jsonb NOT NULL DEFAULT '{}',
    timestamp     timestamptz NOT NULL,
    PRIMARY KEY (seq, idx)
);
-- The points of one execution (GET /api/v1/metrics/{executionId}), in time order.
CREATE INDEX metrics_execution ON metrics (execution_id, timestamp, seq, idx);
-- The points of one metric of a flow in a time range: aggregates by the minute, and the
-- partial hours at the edges of a longer range.
CREATE INDEX metrics_series ON metrics (namespace, flow_id, name, timestamp);

-- Per hour (UTC) and series (namespace, flow, task, name, type, tags): how many points, their
-- sum, minimum and maximum. Kept in the transaction that inserts the points, from the rows
-- the insert really added.
CREATE TABLE metric_buckets (
    bucket     timestamptz NOT NULL,
    namespace  text,
    flow_id    text,
    task_id    text,
    name       text NOT NULL,
    type       text NOT NULL,
    tags       jsonb NOT NULL DEFAULT '{}',
    count      bigint NOT NULL,
    sum        double precision NOT NULL,
    min        double precision NOT NULL,
    max        double precision NOT NULL,
    -- A flow's metric over a range of hours; an execution's duration has no task (NULL).
    CONSTRAINT metric_buckets_series UNIQUE NULLS NOT DISTINCT
        (namespace, flow_id, name, bucket, task_id, type, tags)
);
-- A task's metrics, and the tasks of a flow that report any.
CREATE INDEX metric_buckets_task ON metric_buckets (namespace, flow_id, task_id, name, bucket);
