-- Custom dashboards (projections/dashboards.py): the latest YAML source of each, for listing.
-- A dashboard's own reads (GET /api/v1/dashboards/{id}, its charts) fold its stream instead,
-- so a dashboard saved a moment ago answers before this table holds it.
CREATE TABLE dashboards (
    id          text COLLATE "C" PRIMARY KEY,
    title       text NOT NULL,
    source      text NOT NULL,
    deleted     boolean NOT NULL DEFAULT false,
    created     timestamptz NOT NULL,
    updated     timestamptz NOT NULL,
    updated_by  text,
    last_seq    bigint NOT NULL
);
CREATE INDEX dashboards_title ON dashboards (lower(title), id) WHERE NOT deleted;
