-- What each flow names of other flows, kept by the flows projection (projections/flows.py) in
-- the same transaction as its `flows` row, so that the dependency routes
-- (api/topology_routes.py) answer with SQL instead of parsing every flow's YAML per request.
-- Rows exist only for flows not deleted (their latest revision); rebuilt by `sys reindex` with
-- `flows`. No foreign key and no sequence: a rebuild copies each table on its own, and swaps
-- them together.

-- One row per flow a Subflow or ForEachItem task runs (written without an expression).
CREATE TABLE flow_calls (
    namespace         text NOT NULL,
    flow_id           text NOT NULL,
    target_namespace  text NOT NULL,
    target_flow_id    text NOT NULL,
    PRIMARY KEY (namespace, flow_id, target_namespace, target_flow_id)
);
-- Who calls a flow.
CREATE INDEX flow_calls_target ON flow_calls (target_namespace, target_flow_id);

-- One row per flow with Flow triggers: per trigger, its requirements, each a choice of flows
-- (`[[[{"namespace", "comparison", "flowId"}, ...], ...], ...]`, engine/graph.listens_json).
CREATE TABLE flow_listeners (
    namespace     text NOT NULL,
    flow_id       text NOT NULL,
    requirements  jsonb NOT NULL,
    PRIMARY KEY (namespace, flow_id)
);

-- The flows recorded before this migration: SQL cannot parse their YAML, so the flows
-- projection applies its events again from the start. That is idempotent: each row takes the
-- values of its flow's latest event, and an older event does not overwrite a newer revision
-- (revisions only grow), so listings never step back while it catches up; the links of each
-- flow are written as its latest revision is applied again.
UPDATE checkpoints SET position = 0, updated_at = now() WHERE name = 'projection:flows';
