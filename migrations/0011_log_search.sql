-- Searches of the logs read model (GET /api/v1/logs/search and /histogram, api/logs_routes.py)
-- that stay index lookups at ten million lines.

-- The words of a log line for `q=`: its message and the ids it belongs to, split on everything
-- that is not a letter or a digit (so `company.team`, `my_task` and `2024-05-01` are words a
-- prefix can find, the way Kestra indexes them), lowercased by the 'simple' configuration (no
-- stemming: log lines are full of identifiers). At most 64 KiB of a message is indexed: a
-- tsvector holds at most 1 MiB, and a longer line must not stop the projection.
CREATE FUNCTION log_search_text(value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN regexp_replace(coalesce(value, '') COLLATE "default", '[^[:alnum:]]+', ' ', 'g');

CREATE FUNCTION log_search_vector(
    message text, execution_id text, task_id text, task_run_id text, namespace text, flow_id text
) RETURNS tsvector
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN to_tsvector('simple'::regconfig, log_search_text(left(message, 65536)))
        || to_tsvector('simple'::regconfig, log_search_text(
            concat_ws(' ', execution_id, task_id, task_run_id, namespace, flow_id)
        ));

-- `q=` as a query: every word of it, each as a prefix (`hel` finds hello), all required.
CREATE FUNCTION log_search_query(q text) RETURNS tsquery
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (
        SELECT to_tsquery(
            'simple'::regconfig, coalesce(string_agg(quote_literal(w) || ':*', ' & '), '')
        )
        FROM regexp_split_to_table(lower(log_search_text(q)), ' ') AS w
        WHERE w <> ''
    );

-- An expression index rather than a stored column: no rewrite of an existing table of
-- millions of lines, and no second copy of every message in the table; the query repeats the
-- expression (projections/logs.py, TEXT_MATCH) so the planner uses it.
CREATE INDEX logs_text ON logs
    USING gin (log_search_vector(message, execution_id, task_id, task_run_id, namespace, flow_id));

-- The search shows the newest lines first; the histogram counts lines of a time range by
-- level. The INCLUDE columns answer the level, namespace and flow filters in the index.
-- Every index ends with (timestamp DESC, seq DESC, line DESC), the order of a page.
CREATE INDEX logs_recent ON logs (timestamp DESC, seq DESC, line DESC)
    INCLUDE (level, namespace, flow_id);
CREATE INDEX logs_namespace ON logs (namespace, timestamp DESC, seq DESC, line DESC)
    INCLUDE (flow_id, level);
CREATE INDEX logs_flow ON logs (flow_id, timestamp DESC, seq DESC, line DESC)
    INCLUDE (namespace, level);
-- A minimum level that few lines reach (WARN, ERROR): those lines only, in order.
CREATE INDEX logs_level ON logs (level, timestamp DESC, seq DESC, line DESC)
    INCLUDE (namespace, flow_id);
