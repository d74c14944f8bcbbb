-- Each event row carries a hash chained to the row before it, so a change, a removal or a
-- reordering of any row (even by a superuser with the triggers disabled) shows up in
-- `tiercel sys verify --chain`, which recomputes the chain outside the database.
--
-- hash(row) = sha256(hash(previous row) || content(row)); the row before the first is 32 zero
-- bytes. content(row) is, for each of seq, stream_id, version, type, data, meta, command_id and
-- recorded_at in that order: the UTF-8 length in bytes of the field's text, ':', that text and a
-- newline ('-' and a newline for a NULL command_id). A field's text is: decimal for the numbers,
-- the text form of jsonb for data and meta (canonical: keys sorted, one spacing), and
-- 'YYYY-MM-DD HH24:MI:SS.US' in UTC for recorded_at. The length prefixes keep the encoding
-- unambiguous whatever a stream id or command id holds.

CREATE FUNCTION events_chain_content(
    seq bigint, stream_id text, version integer, type text, data jsonb, meta jsonb,
    command_id text, recorded_at timestamptz
) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT convert_to(
        octet_length(seq::text) || ':' || seq::text || E'\n'
        || octet_length(stream_id) || ':' || stream_id || E'\n'
        || octet_length(version::text) || ':' || version::text || E'\n'
        || octet_length(type) || ':' || type || E'\n'
        || octet_length(data::text) || ':' || data::text || E'\n'
        || octet_length(meta::text) || ':' || meta::text || E'\n'
        || coalesce(octet_length(command_id) || ':' || command_id, '-') || E'\n'
        || octet_length(to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'))
        || ':' || to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || E'\n',
        'UTF8')
$$;

ALTER TABLE events ADD COLUMN hash bytea;

-- Rows recorded before this migration get their chain now, in seq order. Only the owner may
-- lift the append-only trigger, and only inside this transaction.
ALTER TABLE events DISABLE TRIGGER events_append_only;
DO $$
DECLARE
    r record;
    prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
BEGIN
    FOR r IN SELECT * FROM events ORDER BY seq LOOP
        prev := sha256(prev || events_chain_content(
            r.seq, r.stream_id, r.version, r.type, r.data, r.meta, r.command_id, r.recorded_at));
        UPDATE events SET hash = prev WHERE seq = r.seq;
    END LOOP;
END $$;
ALTER TABLE events ENABLE TRIGGER events_append_only;

ALTER TABLE events ALTER COLUMN hash SET NOT NULL;

-- Appends are serialised by the store's advisory lock (engine/store.py, key "events"), taken
-- before a position is drawn, so the previous row is the last one committed. The trigger takes
-- the same lock itself (a no-op when the store holds it), and refuses a row whose position was
-- drawn before a later one was written (an INSERT that bypassed the store's lock): chained
-- behind the wrong row, it would break the chain for good. The writer retries with a new one.
CREATE FUNCTION events_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
    prev bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(111559182283891);
    SELECT e.seq, e.hash INTO last, prev FROM events e ORDER BY e.seq DESC LIMIT 1;
    IF last >= NEW.seq THEN
        RAISE EXCEPTION 'events: position % was written before position %', last, NEW.seq
            USING ERRCODE = 'serialization_failure',
                  HINT = 'Append through the event store, which takes the append lock before '
                         'drawing a position; retry to draw a new one.';
    END IF;
    NEW.hash := sha256(
        coalesce(prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
        || events_chain_content(NEW.seq, NEW.stream_id, NEW.version, NEW.type, NEW.data,
                                NEW.meta, NEW.command_id, NEW.recorded_at));
    RETURN NEW;
END $$;

CREATE TRIGGER events_chain BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_chain();
