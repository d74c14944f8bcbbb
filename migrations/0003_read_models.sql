-- Read models built by projections (projections/). Disposable: rebuilt from the events.

CREATE TABLE flows (
    namespace    text NOT NULL,
    flow_id      text NOT NULL,
    revision     integer NOT NULL,
    source       text NOT NULL,
    deleted      boolean NOT NULL DEFAULT false,
    description  text,
    labels       jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated      timestamptz NOT NULL,
    PRIMARY KEY (namespace, flow_id)
);

CREATE TABLE executions (
    id             text PRIMARY KEY,
    namespace      text NOT NULL,
    flow_id        text NOT NULL,
    flow_revision  integer NOT NULL,
    state          text NOT NULL,
    histories      jsonb NOT NULL,
    labels         jsonb NOT NULL DEFAULT '[]'::jsonb,
    inputs         jsonb NOT NULL DEFAULT '{}'::jsonb,
    outputs        jsonb,
    trigger        jsonb,
    parent_id      text,
    original_id    text,
    task_run_count integer NOT NULL DEFAULT 0,
    start_date     timestamptz NOT NULL,
    end_date       timestamptz,
    last_seq       bigint NOT NULL
);
CREATE INDEX executions_flow ON executions (namespace, flow_id, start_date DESC);
CREATE INDEX executions_start ON executions (start_date DESC);
CREATE INDEX executions_state ON executions (state, start_date DESC);

CREATE TABLE logs (
    seq           bigint NOT NULL,
    line          integer NOT NULL,
    execution_id  text NOT NULL,
    namespace     text,
    flow_id       text,
    task_id       text,
    task_run_id   text,
    attempt       integer,
    timestamp     timestamptz NOT NULL,
    level         text NOT NULL,
    message       text NOT NULL,
    PRIMARY KEY (seq, line)
);
CREATE INDEX logs_execution ON logs (execution_id, seq, line);
