-- The most common words of the log lines and the share of lines holding each, as ANALYZE
-- last sampled them for the text index (logs_text). The runtime role may not read the
-- statistics of an index it does not own (pg_stats hides them), so the owner answers for it;
-- projections/logs.py `prefix_share` reads them to tell a prefix of a common word (`lin` of
-- `line`) from a rare one before asking the index. The index is found by its table, not its
-- name: `sys reindex` swaps in a rebuilt table with indexes of its own.
CREATE FUNCTION log_search_common_words() RETURNS TABLE (word text, share real)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path FROM CURRENT
AS $$
    SELECT m.word, m.share
    FROM (
        SELECT s.most_common_elems::text::text[] AS words, s.most_common_elem_freqs AS shares
        FROM pg_stats s
        JOIN pg_namespace n ON n.nspname = s.schemaname
        JOIN pg_class c ON c.relname = s.tablename AND c.relnamespace = n.oid
        JOIN pg_index i ON i.indexrelid = c.oid
        WHERE i.indrelid = 'logs'::regclass AND s.most_common_elems IS NOT NULL
        LIMIT 1
    ) AS found,
    -- The shares end with three summaries (lowest, highest, empty): their words are NULL.
    unnest(found.words, found.shares) AS m(word, share)
    WHERE m.word IS NOT NULL
$$;
