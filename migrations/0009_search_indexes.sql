-- Searches of the executions read model that stay index lookups at a million executions.
-- Each index below serves a filter of GET /api/v1/executions/search (projections/executions.py
-- builds the queries; bench/search.py shows their plans). Results are sorted by start date,
-- newest first, ties broken by id, so every index ends with (start_date DESC, id DESC): a
-- filter on its leading column reads its rows already in order and stops after one page.
-- The INCLUDE columns let a filter on them be checked in the index alone (index-only scans),
-- which is how a page deep in the results is reached without visiting the skipped rows.

-- Namespaces, flow ids and execution ids compare byte by byte. A namespace prefix is then a
-- btree range ('a' <= namespace < 'a/'), and so is LIKE 'a.%' (auth's namespace scopes): under
-- the database's default collation (C.UTF-8 is a libc locale to PostgreSQL 16) neither can use
-- an index.
ALTER TABLE executions
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN namespace TYPE text COLLATE "C",
    ALTER COLUMN flow_id TYPE text COLLATE "C";

-- Labels as an array of '["key", "value"]' texts: `@>` on it uses the GIN index below, and
-- ANALYZE keeps the frequency of each label (most_common_elems), so the planner knows that
-- env:prod is in most rows and a correlation id in one, and reads in date order for the first
-- and through the index for the second. (On the jsonb column it would only know whole label
-- sets, which the system.correlationId label makes all different.)
CREATE FUNCTION execution_label_pairs(labels jsonb) RETURNS text[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ARRAY(
        SELECT jsonb_build_array(l ->> 'key', l ->> 'value')::text
        FROM jsonb_array_elements(
            CASE jsonb_typeof(labels) WHEN 'array' THEN labels ELSE '[]'::jsonb END
        ) AS l
    );

ALTER TABLE executions
    ADD COLUMN label_pairs text[]
        GENERATED ALWAYS AS (execution_label_pairs(labels)) STORED;

-- For `q=`: every prefix of every word of the namespace and flow id, lowercased (at most 32
-- characters of each), so that `q=team1 ing` is `search_words @> '{team1,ing}'`: word prefixes
-- as Kestra's full-text search matches them, answered by the GIN index below, with a frequency
-- for each prefix in the statistics, as for labels. `q=` also finds the ids it starts, through
-- the primary key. pg_trgm would allow any substring, but the embedded PostgreSQL does not
-- ship it; a tsvector prefix query leaves the planner guessing how many rows match.
CREATE FUNCTION execution_search_words(namespace text, flow_id text) RETURNS text[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ARRAY(
        SELECT DISTINCT left(w, n)
        FROM regexp_split_to_table(
                lower((namespace || ' ' || flow_id) COLLATE "C"), '[^a-z0-9]+'
             ) AS w,
             generate_series(1, least(length(w), 32)) AS n
        WHERE w <> ''
    );

ALTER TABLE executions
    ADD COLUMN search_words text[]
        GENERATED ALWAYS AS (execution_search_words(namespace, flow_id)) STORED;

-- Ten times the default sample for the elements of these arrays: the frequencies of up to
-- 10,000 labels and word prefixes are known to the planner.
ALTER TABLE executions ALTER COLUMN label_pairs SET STATISTICS 1000;
ALTER TABLE executions ALTER COLUMN search_words SET STATISTICS 1000;

DROP INDEX executions_flow;
DROP INDEX executions_start;
DROP INDEX executions_state;

-- No filter, a date window, or a filter most rows pass: read in order, check the included
-- columns (labels too), stop after the page.
CREATE INDEX executions_recent ON executions (start_date DESC, id DESC)
    INCLUDE (namespace, flow_id, state, end_date, label_pairs);
-- A namespace prefix that few rows have: the range, then a sort of just those rows.
CREATE INDEX executions_namespace ON executions (namespace, start_date DESC, id DESC)
    INCLUDE (flow_id, state);
-- A flow's executions (the namespace is checked in the index).
CREATE INDEX executions_flow ON executions (flow_id, start_date DESC, id DESC)
    INCLUDE (namespace, state);
-- One state, in order; several states are read state by state, each in order, and merged.
CREATE INDEX executions_state ON executions (state, start_date DESC, id DESC)
    INCLUDE (namespace, flow_id, label_pairs);
CREATE INDEX executions_labels ON executions USING gin (label_pairs);
CREATE INDEX executions_words ON executions USING gin (search_words);

-- The logs of an execution carry its namespace and flow id (the projection now writes them);
-- lines written before are given them from the execution's first event.
ALTER TABLE logs
    ALTER COLUMN namespace TYPE text COLLATE "C",
    ALTER COLUMN flow_id TYPE text COLLATE "C";
UPDATE logs AS l
SET namespace = c.data ->> 'namespace', flow_id = c.data ->> 'flowId'
FROM events AS c
WHERE l.namespace IS NULL
  AND c.stream_id = 'exec:' || l.execution_id
  AND c.type = 'ExecutionCreated';
