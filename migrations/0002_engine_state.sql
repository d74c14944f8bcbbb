-- State the engine's own services keep beside their checkpoints. Like read models, these
-- tables are derived from events and can be rebuilt from position 0.

-- Timers not yet fired (Sleep, Pause delays, retry back-off...), kept by the timer service.
CREATE TABLE engine_timers (
    timer_id      text NOT NULL,
    execution_id  text NOT NULL,
    fire_at       timestamptz NOT NULL,
    PRIMARY KEY (execution_id, timer_id)
);
CREATE INDEX engine_timers_fire_at ON engine_timers (fire_at);

-- Workers seen alive, and the attempts each one holds, kept by the watchdog.
CREATE TABLE engine_workers (
    worker_id   text PRIMARY KEY,
    last_seen   timestamptz NOT NULL,
    hostname    text NOT NULL DEFAULT ''
);

CREATE TABLE engine_attempts (
    stream_id     text PRIMARY KEY,
    execution_id  text NOT NULL,
    task_run_id   text NOT NULL,
    attempt       integer NOT NULL,
    worker_id     text NOT NULL,
    version       integer NOT NULL
);
CREATE INDEX engine_attempts_worker ON engine_attempts (worker_id);
