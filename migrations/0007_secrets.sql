-- Secrets live in tables, not in events: a value that must be erasable cannot sit in the
-- append-only log. Changes to a namespace's secrets are still recorded as events (SecretSet,
-- SecretDeleted), naming the namespace, the key and who made them, never the value.

-- Each namespace's secrets, encrypted (AES-GCM) with the master key (TIERCEL_SECRET_KEY).
-- ciphertext = base64(version byte || 12-byte nonce || ciphertext and tag), bound to its
-- namespace and key so a row copied elsewhere does not decrypt.
CREATE TABLE namespace_secrets (
    namespace    text NOT NULL,
    key          text NOT NULL,
    ciphertext   text NOT NULL,
    description  text,
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_by   text NOT NULL,
    PRIMARY KEY (namespace, key)
);

-- One key per execution that recorded a SECRET value (an input, a resume value): the events
-- hold those values encrypted with it, so deleting the row erases every copy at once. `wrapped`:
-- the key is itself encrypted with the master key (always, when the process that made it had
-- one).
CREATE TABLE execution_keys (
    execution_id  text PRIMARY KEY,
    key           bytea NOT NULL,
    wrapped       boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
