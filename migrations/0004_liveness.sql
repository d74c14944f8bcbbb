-- Liveness is a table, not history: each worker inserts its row in engine_workers before it
-- claims anything and refreshes last_seen with the database's clock while it lives. The
-- watchdog declares a worker lost by deleting its row (and recording WorkerLost); a clean stop
-- deletes it too. Unlike the other engine tables this one is not derived from events.
ALTER TABLE engine_workers
    ADD COLUMN pid integer,
    ADD COLUMN started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ALTER COLUMN last_seen SET DEFAULT clock_timestamp();

COMMENT ON TABLE engine_workers IS
    'Live workers: written by each worker (register, heartbeat), deleted on stop or when the watchdog declares it lost';
