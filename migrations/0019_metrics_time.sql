-- The metric points of a time range, whatever their flow: a dashboard chart over metrics reads
-- the whole hours of its range from metric_buckets and the partial hours at its two ends from
-- the points (projections/dashboards.py), a few thousand points found by this index instead
-- of a scan of every point.
CREATE INDEX metrics_time ON metrics (timestamp);
