-- Keys the web servers share (the one that signs session cookies), created by the first server
-- that needs one. Not in `events`: a key must be replaceable and never replayed.
CREATE TABLE auth_keys (
    name        text PRIMARY KEY,
    key         bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
