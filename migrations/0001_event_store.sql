-- The append-only event log: every state change of Tiercel is one row here.
CREATE TABLE events (
    seq          bigserial PRIMARY KEY,
    stream_id    text COLLATE "C" NOT NULL,
    version      integer NOT NULL,
    type         text NOT NULL,
    data         jsonb NOT NULL,
    meta         jsonb NOT NULL DEFAULT '{}'::jsonb,
    command_id   text,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_stream_version UNIQUE (stream_id, version)
);

-- A command id is stored on the first event of an append; retrying the same command finds it.
CREATE UNIQUE INDEX events_command_id ON events (command_id) WHERE command_id IS NOT NULL;

CREATE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Record a new event instead of changing an old one.';
END $$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_reject_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();

-- Where each consumer (executor, workers, projections) has read up to.
CREATE TABLE checkpoints (
    name        text PRIMARY KEY,
    position    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
