-- The executions search's trigger and parent filters, and the rollups the dashboard and
-- GET /api/v1/executions/stats/daily read (projections/executions.py keeps them).

-- Each filter ends with (start_date DESC, id DESC), as the indexes of 0009 do: the rows of one
-- parent, trigger type or triggering execution are read already in page order.
CREATE INDEX executions_parent ON executions (parent_id, start_date DESC, id DESC)
    WHERE parent_id IS NOT NULL;
CREATE INDEX executions_trigger_execution
    ON executions (((trigger -> 'variables' ->> 'executionId')), start_date DESC, id DESC)
    WHERE (trigger -> 'variables' ->> 'executionId') IS NOT NULL;
CREATE INDEX executions_trigger_type
    ON executions (((trigger ->> 'type')), start_date DESC, id DESC)
    WHERE trigger IS NOT NULL;

-- A row written from the executor's fold of the execution's history (after a restart, a state
-- set by hand, or for a replay's execution; projections/executions.py `_refold`): its later
-- changes are folded too.
ALTER TABLE executions ADD COLUMN folded boolean NOT NULL DEFAULT false;

-- Sorting by end date or duration (GET /api/v1/executions/search?sort=state.endDate:desc): read
-- in that order, ties newest first, as projections/executions.py `_order` sorts. Both change
-- only when the state does, an update that already writes every index; the task-run count,
-- which changes at each task, has no index, so its updates stay in place (HOT).
CREATE INDEX executions_end ON executions (end_date, start_date DESC, id DESC);
CREATE INDEX executions_duration
    ON executions (((end_date - start_date)), start_date DESC, id DESC);

-- Executions by their current state, per hour of their start (UTC), namespace and flow. A row
-- whose count falls to 0 is deleted, so that the table rebuilt from the events equals it.
CREATE TABLE execution_stats (
    bucket     timestamptz NOT NULL,
    namespace  text COLLATE "C" NOT NULL,
    flow_id    text COLLATE "C" NOT NULL,
    state      text NOT NULL,
    count      bigint NOT NULL,
    PRIMARY KEY (bucket, namespace, flow_id, state)
);
CREATE INDEX execution_stats_namespace ON execution_stats (namespace, bucket);

-- Durations of ended executions, by the same keys and by `le`: the upper bound in seconds of
-- the duration's class in a fixed log-scale list (projections/executions.py DURATION_BOUNDS_MS,
-- 'Infinity' last). `count` is the executions of that class (not cumulative), `sum` their total
-- duration in seconds. The sum is kept in whole milliseconds (`sum_ms`), which adds and
-- subtracts exactly: a replay or a state change undone gives back the very same value.
CREATE TABLE execution_durations (
    bucket     timestamptz NOT NULL,
    namespace  text COLLATE "C" NOT NULL,
    flow_id    text COLLATE "C" NOT NULL,
    state      text NOT NULL,
    le         double precision NOT NULL,
    count      bigint NOT NULL,
    sum_ms     bigint NOT NULL,
    sum        double precision GENERATED ALWAYS AS (sum_ms::double precision / 1000::double precision) STORED,
    PRIMARY KEY (bucket, namespace, flow_id, state, le)
);
CREATE INDEX execution_durations_namespace ON execution_durations (namespace, bucket);

-- The executions already projected.
INSERT INTO execution_stats (bucket, namespace, flow_id, state, count)
SELECT date_trunc('hour', start_date AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', namespace,
       flow_id, state, count(*)
FROM executions
GROUP BY 1, 2, 3, 4;

INSERT INTO execution_durations (bucket, namespace, flow_id, state, le, count, sum_ms)
SELECT bucket, namespace, flow_id, state, le, count(*), sum(ms)
FROM (
    SELECT date_trunc('hour', start_date AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
           namespace, flow_id, state, ms,
           coalesce(
               (SELECT min(b) FROM unnest(ARRAY[
                   10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
                   250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000, 50000000,
                   100000000
               ]::bigint[]) AS b WHERE ms <= b)::double precision / 1000::double precision,
               'Infinity'
           ) AS le
    FROM (
        SELECT *, floor(extract(epoch FROM end_date - start_date) * 1000)::bigint AS ms
        FROM executions
        WHERE end_date IS NOT NULL
    ) AS ended
) AS classed
GROUP BY 1, 2, 3, 4, 5;
