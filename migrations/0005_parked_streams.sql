-- Executions the executor could not fold or decide on: set aside (not retried in a crash loop)
-- and reported by `tiercel sys verify`, the readiness probe and the log. Derived state, like the
-- other engine tables.
CREATE TABLE engine_parked (
    execution_id  text PRIMARY KEY,
    seq           bigint NOT NULL,
    error         text NOT NULL,
    parked_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
