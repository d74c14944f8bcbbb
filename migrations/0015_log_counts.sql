-- Counts of log lines kept beside the logs read model (projections/logs.py), so that
-- GET /api/v1/logs/histogram over a month reads thousands of rows, not millions of lines.
-- Both tables are written in the transaction that writes (or deletes) the lines, from the
-- lines actually inserted (or deleted): replaying events adds nothing twice.
--
-- A line without a known namespace or flow (its execution's ExecutionCreated not found) is
-- counted under '' (a key column cannot be null); no namespace or flow filter matches ''.
-- Namespaces and flow ids are byte-wise, as in `logs`: a namespace prefix is an index range.

-- Per minute, namespace, flow and level: ranges of a day or more with a flowId filter, and any
-- range whose buckets are whole minutes.
CREATE TABLE log_counts (
    minute     timestamptz NOT NULL,
    namespace  text COLLATE "C" NOT NULL,
    flow_id    text COLLATE "C" NOT NULL,
    level      text NOT NULL,
    count      bigint NOT NULL,
    PRIMARY KEY (minute, namespace, flow_id, level)
);
CREATE INDEX log_counts_namespace ON log_counts (namespace, minute) INCLUDE (flow_id, level, count);
CREATE INDEX log_counts_flow ON log_counts (flow_id, minute) INCLUDE (namespace, level, count);

-- Per hour, namespace and level (no flow: a month of it is ~100 times fewer rows than the
-- minutes of a month): ranges of five days or more, whose buckets are whole hours.
CREATE TABLE log_counts_hourly (
    hour       timestamptz NOT NULL,
    namespace  text COLLATE "C" NOT NULL,
    level      text NOT NULL,
    count      bigint NOT NULL,
    PRIMARY KEY (hour, namespace, level)
);
CREATE INDEX log_counts_hourly_namespace ON log_counts_hourly (namespace, hour)
    INCLUDE (level, count);

-- The lines already in the read model, counted once.
INSERT INTO log_counts (minute, namespace, flow_id, level, count)
SELECT date_bin('1 minute', timestamp, '2001-01-01T00:00:00Z'), coalesce(namespace, ''),
       coalesce(flow_id, ''), level, count(*)
FROM logs GROUP BY 1, 2, 3, 4;
INSERT INTO log_counts_hourly (hour, namespace, level, count)
SELECT date_bin('1 hour', timestamp, '2001-01-01T00:00:00Z'), coalesce(namespace, ''), level,
       count(*)
FROM logs GROUP BY 1, 2, 3;
