-- The audit read model (projections/audit.py): one row per command recorded in `events` (an
-- event whose meta names its actor and that is no engine reaction), for GET /api/v1/audit.
-- Disposable: `tiercel sys reindex` rebuilds it from the events.
CREATE TABLE audit (
    seq             bigint PRIMARY KEY,
    recorded_at     timestamptz NOT NULL,
    actor           text NOT NULL,
    kind            text NOT NULL,
    resource_id     text NOT NULL,
    namespace       text,
    action          text NOT NULL,
    event_type      text NOT NULL,
    stream_id       text NOT NULL,
    version         integer NOT NULL,
    client_address  text,
    reason          text,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- The search lists newest first (seq DESC, the primary key read backwards) and filters by one
-- or more of these; each index answers its filter in position order, so a page is read from
-- the index and stops at its size.
CREATE INDEX audit_actor ON audit (actor, seq DESC);
CREATE INDEX audit_resource ON audit (kind, resource_id, seq DESC);
CREATE INDEX audit_kind ON audit (kind, seq DESC);
CREATE INDEX audit_action ON audit (action, seq DESC);
-- A namespace and its children: `namespace = $1 OR namespace LIKE '$1.%'` (text_pattern_ops
-- makes the prefix an index range whatever the collation).
CREATE INDEX audit_namespace ON audit (namespace text_pattern_ops, seq DESC);
CREATE INDEX audit_time ON audit (recorded_at);
