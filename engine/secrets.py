"""Secrets: where their values come from, how they are kept, and how they are kept out of sight.

Values. `secret('NAME')` in a task's properties reads, in order, the secret store of the flow's
namespace and of each parent namespace (`a.b.c`, `a.b`, `a`), then the worker's environment
variable `SECRET_NAME` (base64, Kestra's open-source convention).

The store. A namespace's secrets are rows of `namespace_secrets`, each value encrypted with
AES-GCM under the master key (`TIERCEL_SECRET_KEY`, or `secret-key` /
`kestra.encryption.secret-key` in the config file; `server local` on its embedded database makes
one in its data directory). They are rows rather than events because a secret must be erasable:
an old value written into the append-only log would stay there, readable by anyone who ever gets
the master key. Changes are recorded as events all the same (`SecretSet`, `SecretDeleted`, with
the actor), naming the key and never the value, so the audit trail is complete.

Recorded values. What users give an execution is recorded with it, encrypted with a key of that
execution kept in `execution_keys`, outside `events`: deleting that row (a purge) makes every
copy unreadable while the events stay (crypto-shredding; invariants 1 and 9). Two shapes:

- A SECRET input (or resume value) holds Kestra's encrypted-string shape
  `{"type": "io.kestra.datatype:aes_encrypted", "value": ...}`. It stays encrypted everywhere:
  the pure core passes it along as data, the worker decrypts it when it renders a task (and
  masks it), the API shows it as `******`.
- Every other value users give (the inputs of `ExecutionCreated`, of a subflow's request, the
  values of `ExecutionResumeRequested` and the `onResume` output the executor derives from
  them: `_PLACES`) is sealed, each value of the map on its own,
  `{"type": "io.tiercel.datatype:sealed", "value": ...}`, and opened again when read.

Sealing and opening happen in the event store, at its one write path and its read paths (as it
offloads large values to internal storage and reads them back): `seal_appends` before an
append, `open_events` after each read. So the events in the database never hold these values
in clear, while every reader (the executor, the worker, the commands and the API, projections,
`sys verify`, the history's time travel) sees them as they were given, with no path of its own
to get right. This was chosen over the alternative of letting the pure core carry sealed values
as data (as it does SECRET ones): the executor renders expressions itself (`If`, `Switch`,
`runIf`, ForEach values, flow outputs, a subflow's inputs), and those must see the values, and
the core must not hold a key. The cost of reading in the shell instead: every read path opens
the values, which one place in the store makes sure of; the executor needs the master key that
wrapped the keys (as the worker already did); and what the executor derives from the values
(an If's branch, a ForEach's values, flow outputs, task outputs and logs) is recorded as it is
derived. `_PLACES` covers the one derived copy that is the values themselves (`onResume`).

Cost. An append holding nothing to seal, and a read holding nothing sealed, cost a scan of the
events in Python and no statement. Otherwise: sealing costs one statement in the append's own
round trip (the keys of every execution of the append, made or read at once, `_keys_for_sealing`;
none when this process made or used the key recently); opening costs one statement in the
read's own round trip (the keys of every execution read). The events a process appends reach
its own consumers through its feed already opened, with the keys it sealed them with.

Erasure. Once the key is gone, sealed and SECRET values read as `<erased>` (`ERASED`): the
history still folds, the API still answers `?at=` and the timeline, and `sys verify` refolds it
and checks the state, but cannot make again the decisions that read those values
(`erased`). A key this process cannot unwrap (no master key) leaves the values sealed:
`unopened` says so, the executor parks such an execution rather than decide on wrong data,
`sys verify` folds it without making its decisions again. Events recorded before sealing
existed (clear values) read as they always did.

Masking. Every secret value a task could see (what `secret()` returned to it, its SECRET inputs)
is replaced by `******` in its log lines, outputs, metrics and failure message before they are
recorded, together with simple encodings of it that a script might print (see `Masker`).
"""

from __future__ import annotations

import base64
import binascii
import decimal
import json
import logging
import os
import re
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine import events as ev
from engine.errors import InvalidRequest, NotFound, TemplateError, TiercelError
from engine.store import Append, EventStore, StoredEvent

if TYPE_CHECKING:
    from engine.db import Database
    from engine.flow import Flow

log = logging.getLogger(__name__)

MASK = "******"
"""What a secret value is replaced with wherever it would be shown or recorded."""
ENCRYPTED_TYPE = "io.kestra.datatype:aes_encrypted"
"""The `type` of an encrypted value in an event (Kestra's EncryptedString)."""
KEY_ENV = "TIERCEL_SECRET_KEY"
"""The environment variable holding the master key (base64 of 16, 24 or 32 random bytes)."""
KEY_FILE = "secret.key"
"""The master key file `server local` writes in its data directory when none is configured."""
ENV_PREFIX = "SECRET_"
"""Kestra's open-source convention: secret NAME is the variable SECRET_NAME, in base64."""
SHORT = 4
"""Values shorter than this are masked only where they stand alone, not inside a word, and
their encodings are not masked (they would blank out unrelated text)."""

_VERSION = b"\x01"
_NONCE_BYTES = 12
_EXECUTION_KEY_AAD = b"tiercel:execution-key"
_VALUE_AAD = b"tiercel:value"
_KEY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
_HOW_TO_SET = (
    f"set {KEY_ENV} (base64 of 32 random bytes, e.g. `openssl rand -base64 32`) in the "
    "environment of every server and CLI, or `secret-key` in the config file"
)


class SecretsUnavailable(TiercelError):
    """Secrets cannot be stored or read here: no master key, or not the one they were made with."""

    status = 503


# --- the master key ------------------------------------------------------------------------------

_configured: bytes | None = None
_parsed: dict[str, bytes] = {}


def parse_master_key(text: str, where: str) -> bytes:
    """The AES key a configured master key (base64) stands for; `where` names its source in
    the error that a malformed key raises."""
    cached = _parsed.get(text)
    if cached is not None:
        return cached
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) not in (16, 24, 32):
        raise SecretsUnavailable(
            f"The master key in {where} is not base64 of 16, 24 or 32 bytes; generate one with "
            "`openssl rand -base64 32`"
        )
    _parsed[text] = key
    return key


def configure_master_key(
    value: str | None, data_dir: Path | None, *, generate: bool = False
) -> str | None:
    """Settle this process's master key at start and return where it comes from (None: there
    is none). `TIERCEL_SECRET_KEY` wins; then `value` (from the config file); then the key file
    of `data_dir`; then, with `generate` (an embedded database no other process shares), a new
    key written to that file (mode 0600)."""
    global _configured
    if raw := os.environ.get(KEY_ENV):
        _configured = parse_master_key(raw, KEY_ENV)
        return KEY_ENV
    if value:
        _configured = parse_master_key(str(value), "the config file (secret-key)")
        return "the config file"
    if data_dir is None:
        return None
    path = Path(data_dir) / KEY_FILE
    if not path.exists() and generate:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = base64.b64encode(os.urandom(32)).decode() + "\n"
        try:
            # O_EXCL: two processes starting at once keep one key, the first one written.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(text)
            log.warning(
                "Generated the master key for secrets in %s (mode 0600). Back it up with the "
                "data directory: without it no stored secret can be read. Set %s to use a key "
                "of your own.",
                path,
                KEY_ENV,
            )
    if not path.exists():
        return None
    if path.stat().st_mode & 0o077:
        log.warning("The master key file %s is readable by others: chmod 600 it", path)
    _configured = parse_master_key(path.read_text(), str(path))
    return str(path)


def master_key() -> bytes | None:
    """The master key of this process, if it has one (`TIERCEL_SECRET_KEY` is read each time,
    so a key given in the environment is always the one used)."""
    raw = os.environ.get(KEY_ENV)
    if raw:
        return parse_master_key(raw, KEY_ENV)
    return _configured


def _require_master_key(doing: str) -> bytes:
    key = master_key()
    if key is None:
        raise SecretsUnavailable(
            f"No master key is configured, so secrets cannot be {doing}: " + _HOW_TO_SET
        )
    return key


# --- encryption ----------------------------------------------------------------------------------


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> str:
    """`plaintext` encrypted and authenticated with `key` (AES-GCM, a fresh random nonce),
    bound to `aad`, as base64 text."""
    nonce = os.urandom(_NONCE_BYTES)
    return base64.b64encode(_VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)).decode()


def decrypt(key: bytes, token: str, aad: bytes) -> bytes:
    """The plaintext of `encrypt`'s result; `ValueError` when it was not made with this key and
    `aad`, or was changed."""
    try:
        raw = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not an encrypted value") from None
    if len(raw) < 1 + _NONCE_BYTES + 16 or raw[:1] != _VERSION:
        raise ValueError("not an encrypted value of a known version")
    nonce, body = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except InvalidTag:
        raise ValueError("it was encrypted with another key, or changed") from None


# --- the store of namespaces' secrets ------------------------------------------------------------


def check_key(namespace: str, key: str) -> None:
    """Refuse a namespace or secret key that does not follow the naming rules."""
    if not _NAMESPACE.match(namespace or ""):
        raise InvalidRequest(
            f"Invalid namespace {namespace[:100]!r}: use letters, digits and . _ - (at most 255)"
        )
    if not _KEY_NAME.match(key or ""):
        raise InvalidRequest(
            f"Invalid secret key {key[:100]!r}: use letters, digits and . _ - (at most 255), "
            "e.g. DB_PASSWORD"
        )


def _store_aad(namespace: str, key: str) -> bytes:
    return f"tiercel:secret:{namespace}/{key}".encode()


def parents(namespace: str) -> list[str]:
    """`namespace` and each namespace above it, nearest first (`a.b.c`, `a.b`, `a`)."""
    parts = namespace.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


async def set_secret(
    store: EventStore,
    namespace: str,
    key: str,
    value: str,
    *,
    description: str | None = None,
    actor: str = "api",
) -> dict[str, Any]:
    """Store (or replace) a secret of `namespace`, encrypted with the master key, and record
    who did it; return its metadata. Refused without a master key."""
    check_key(namespace, key)
    if not isinstance(value, str) or value == "":
        raise InvalidRequest("A secret's value must be a non-empty string")
    master = _require_master_key("stored")
    ciphertext = encrypt(master, value.encode(), _store_aad(namespace, key))

    def write(conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "INSERT INTO namespace_secrets (namespace, key, ciphertext, description, updated_by)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (namespace, key) DO UPDATE SET"
            " ciphertext = EXCLUDED.ciphertext, description = EXCLUDED.description,"
            " updated_by = EXCLUDED.updated_by, updated_at = clock_timestamp()",
            (namespace, key, ciphertext, description, actor),
        )

    audit = Append(
        ev.secret_stream(namespace, key),
        [ev.SecretSet(namespace=namespace, key=key)],
        meta={"actor": actor},
    )
    # One transaction: the row and its audit event are written together or not at all.
    await store.append_many([audit], extra=write)
    found = await _metadata(store.db, namespace, key)
    assert found is not None
    return found


async def delete_secret(store: EventStore, namespace: str, key: str, *, actor: str = "api") -> None:
    """Delete a secret of `namespace` (its value is gone for good); NotFound when none."""
    check_key(namespace, key)

    class _Missing(Exception):
        pass

    def remove(conn: psycopg.Connection[Any]) -> None:
        gone = conn.execute(
            "DELETE FROM namespace_secrets WHERE namespace = %s AND key = %s RETURNING key",
            (namespace, key),
        ).fetchone()
        if gone is None:
            raise _Missing  # rolls back the audit event: nothing was deleted

    audit = Append(
        ev.secret_stream(namespace, key),
        [ev.SecretDeleted(namespace=namespace, key=key)],
        meta={"actor": actor},
    )
    try:
        await store.append_many([audit], extra=remove)
    except _Missing:
        raise NotFound(f"Namespace {namespace} has no secret {key}") from None


def _meta_json(row: dict[str, Any]) -> dict[str, Any]:
    updated = row["updated_at"]
    return {
        "namespace": row["namespace"],
        "key": row["key"],
        "description": row["description"],
        "updated": updated.isoformat().replace("+00:00", "Z") if updated else None,
        "updatedBy": row["updated_by"],
    }


async def _metadata(db: Database, namespace: str, key: str) -> dict[str, Any] | None:
    row = await db.fetchone(
        "SELECT namespace, key, description, updated_at, updated_by FROM namespace_secrets"
        " WHERE namespace = %s AND key = %s",
        (namespace, key),
    )
    return _meta_json(row) if row else None


async def secret_metadata(db: Database, namespace: str, key: str) -> dict[str, Any]:
    """What is known of one secret without its value; NotFound when none."""
    check_key(namespace, key)
    found = await _metadata(db, namespace, key)
    if found is None:
        raise NotFound(f"Namespace {namespace} has no secret {key}")
    return found


async def list_secrets(db: Database, namespace: str) -> list[dict[str, Any]]:
    """The secrets of `namespace` (keys and metadata, never values), sorted by key."""
    check_key(namespace, "x")
    rows = await db.fetchall(
        "SELECT namespace, key, description, updated_at, updated_by FROM namespace_secrets"
        " WHERE namespace = %s ORDER BY key",
        (namespace,),
    )
    return [_meta_json(r) for r in rows]


async def namespace_values(db: Database, namespace: str) -> tuple[dict[str, str], dict[str, str]]:
    """The secrets a task of `namespace` may read from the store: (value by key, the nearest
    namespace's secret overriding a parent's; why, by key, a secret could not be decrypted)."""
    chain = parents(namespace) if _NAMESPACE.match(namespace or "") else []
    if not chain:
        return {}, {}
    rows = await db.fetchall(
        "SELECT namespace, key, ciphertext FROM namespace_secrets WHERE namespace = ANY(%s)",
        (chain,),
    )
    if not rows:
        return {}, {}
    master = master_key()
    values: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    # Farthest first, so a nearer namespace's secret replaces its parent's.
    for row in sorted(rows, key=lambda r: -chain.index(r["namespace"])):
        key = row["key"]
        where = f"secret {key} of namespace {row['namespace']}"
        if master is None:
            unreadable[key] = (
                f"{where} cannot be decrypted: this worker has no master key; " + _HOW_TO_SET
            )
            values.pop(key, None)
            continue
        try:
            plain = decrypt(master, row["ciphertext"], _store_aad(row["namespace"], key))
            values[key] = plain.decode()
            unreadable.pop(key, None)
        except (ValueError, UnicodeDecodeError) as exc:
            unreadable[key] = (
                f"{where} cannot be decrypted ({exc}): the workers' master key is not the one "
                "it was stored with"
            )
            values.pop(key, None)
    return values, unreadable


def env_secret(name: str) -> str | None:
    """Secret `name` from the environment (`SECRET_<NAME>`, base64), or None when unset."""
    raw = os.environ.get(f"{ENV_PREFIX}{name}")
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise TemplateError(
            f"{ENV_PREFIX}{name} is not valid base64 of UTF-8 text; set it to the base64 of "
            "the secret's value"
        ) from None


def lookup(
    namespace: str,
    stored: dict[str, str],
    unreadable: dict[str, str],
    seen: Callable[[str], None],
) -> Callable[..., str]:
    """The `secret(name)` of a task's templates: the store's values of `namespace` and its
    parents (read beforehand: rendering cannot wait for the database), then `SECRET_<NAME>`.
    Each value it returns goes to `seen`, so it is masked wherever the task would show it."""

    def secret(name: Any) -> str:
        key = str(name)
        if not _KEY_NAME.match(key):
            raise TemplateError(
                f"secret({key[:100]!r}): not a secret name (letters, digits, . _ -)"
            )
        if key in stored:
            value = stored[key]
        elif key in unreadable:
            raise TemplateError(f"secret('{key}'): {unreadable[key]}")
        else:
            found = env_secret(key)
            if found is None:
                raise TemplateError(
                    f"secret('{key}') is not set: store it with `tiercel secrets set "
                    f"{namespace or '<namespace>'} {key}` (or PUT /api/v1/namespaces/"
                    f"{namespace or '<namespace>'}/secrets/{key}), or give the workers the "
                    f"environment variable {ENV_PREFIX}{key} holding its value in base64"
                )
            value = found
        seen(value)
        return value

    return secret


# --- the keys of executions and the values encrypted with them -----------------------------------


def is_encrypted(value: Any) -> bool:
    """Whether `value` is an encrypted value as events hold it."""
    return (
        isinstance(value, dict)
        and len(value) == 2
        and value.get("type") == ENCRYPTED_TYPE
        and isinstance(value.get("value"), str)
    )


def _wrap(key: bytes) -> tuple[bytes, bool]:
    master = master_key()
    if master is None:
        return key, False
    return encrypt(master, key, _EXECUTION_KEY_AAD).encode(), True


def _unwrap(stored: bytes, wrapped: bool, execution_id: str) -> bytes:
    if not wrapped:
        return bytes(stored)
    master = master_key()
    if master is None:
        raise SecretsUnavailable(
            f"The key of execution {execution_id} is encrypted with the master key, which this "
            "process does not have: " + _HOW_TO_SET
        )
    try:
        return decrypt(master, bytes(stored).decode(), _EXECUTION_KEY_AAD)
    except (ValueError, UnicodeDecodeError):
        raise SecretsUnavailable(
            f"The key of execution {execution_id} does not decrypt with this process's master "
            "key: every server and worker needs the same TIERCEL_SECRET_KEY"
        ) from None


async def execution_key(db: Database, execution_id: str, *, create: bool = False) -> bytes:
    """The key that encrypts the recorded secret values of `execution_id` (made first with
    `create`, in the same round trip as the read); `NotFound` once it was destroyed (the
    execution was purged)."""
    if create:
        found = await db.run(lambda conn: _keys_for_sealing(conn, [execution_id]))
        return found[execution_id]
    row = await db.fetchone(
        "SELECT key, wrapped FROM execution_keys WHERE execution_id = %s", (execution_id,)
    )
    if row is None:
        raise NotFound(
            f"Execution {execution_id} has no key any more (it was purged): its SECRET values "
            "cannot be read"
        )
    return _unwrap(row["key"], bool(row["wrapped"]), execution_id)


async def share_key(db: Database, from_execution: str, to_execution: str) -> None:
    """Let `to_execution` (a retry recorded with the same inputs) read the values encrypted
    for `from_execution`: it gets a copy of the key, destroyed with it, not with the other."""
    await db.execute(
        "INSERT INTO execution_keys (execution_id, key, wrapped)"
        " SELECT %s, key, wrapped FROM execution_keys WHERE execution_id = %s"
        " ON CONFLICT (execution_id) DO NOTHING",
        (to_execution, from_execution),
    )


async def destroy_key(db: Database, execution_id: str) -> None:
    """Delete the key of `execution_id`: its recorded secret values can never be read again."""
    with _sealing_lock:
        _sealing_keys.pop(execution_id, None)
    await db.execute("DELETE FROM execution_keys WHERE execution_id = %s", (execution_id,))


def encrypt_value(key: bytes, value: str) -> dict[str, str]:
    """`value` encrypted with an execution's key, as events record it."""
    return {"type": ENCRYPTED_TYPE, "value": encrypt(key, value.encode(), _VALUE_AAD)}


def _replace_at(values: dict[str, Any], path: list[str], change: Callable[[Any], Any]) -> None:
    dotted = ".".join(path)
    if dotted in values:  # an id whose prefix held a plain value stays dotted (inputs.nest)
        values[dotted] = change(values[dotted])
        return
    target: Any = values
    for part in path[:-1]:
        target = target.get(part) if isinstance(target, dict) else None
    if isinstance(target, dict) and path[-1] in target:
        target[path[-1]] = change(target[path[-1]])


async def encrypt_inputs(
    db: Database,
    flow: Flow,
    values: dict[str, Any],
    execution_id: str,
    *,
    also: Collection[str] = (),
) -> dict[str, Any]:
    """The resolved inputs of a new execution as its event records them: each SECRET input's
    value (and any text input equal to one of `also`, secrets a parent passed on) encrypted
    with the execution's key, made for it here. Without such a value, `values` unchanged."""
    todo = _to_encrypt(flow, values, also)
    if not todo:
        return values
    key = await execution_key(db, execution_id, create=True)
    return _encrypt_at(key, values, todo)


def encrypt_secret_inputs(key: bytes, flow: Flow, values: dict[str, Any]) -> dict[str, Any]:
    """`values` resolved against `flow`'s inputs with each SECRET one encrypted with `key`
    (an execution's): for values recorded after its creation, such as a resume's."""
    todo = _to_encrypt(flow, values, ())
    return _encrypt_at(key, values, todo) if todo else values


def _to_encrypt(flow: Flow, values: dict[str, Any], also: Collection[str]) -> list[list[str]]:
    passed = {v for v in also if v}
    todo = [i.id_.split(".") for i in flow.inputs if i.type == "SECRET"]
    if passed:
        todo += [p for p in _text_paths(values, []) if _get(values, p) in passed and p not in todo]
    return [p for p in todo if isinstance(_get(values, p), str) and _get(values, p) != ""]


def _encrypt_at(key: bytes, values: dict[str, Any], paths: list[list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(values))  # a copy to change: inputs are JSON
    for path in paths:
        _replace_at(out, path, lambda v: encrypt_value(key, v) if isinstance(v, str) else v)
    return out


def _get(values: Any, path: list[str]) -> Any:
    dotted = ".".join(path)
    if isinstance(values, dict) and dotted in values:
        return values[dotted]
    for part in path:
        values = values.get(part) if isinstance(values, dict) else None
    return values


def _text_paths(value: Any, prefix: list[str]) -> Iterable[list[str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _text_paths(v, [*prefix, str(k)])
    elif isinstance(value, str) and prefix:
        yield prefix


async def decrypt_values(db: Database, execution_id: str, value: Any) -> tuple[Any, list[str]]:
    """`value` with each encrypted value of `execution_id` in it decrypted, and the plaintexts
    found (to be masked). The key is read only when there is something to decrypt; a value
    that does not decrypt with it (made for another execution) is left as it is."""
    if not has_encrypted(value):
        return value, []
    key = await execution_key(db, execution_id)
    found: list[str] = []

    def walk(item: Any) -> Any:
        if isinstance(item, str) and item.startswith(_AS_TEXT):
            item = _from_text(item)
        if is_encrypted(item):
            try:
                plain = decrypt(key, item["value"], _VALUE_AAD).decode()
            except (ValueError, UnicodeDecodeError):
                return item
            found.append(plain)
            return plain
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    return walk(value), found


_AS_TEXT = '{"type":"' + ENCRYPTED_TYPE + '"'
"""How a rendered template writes an encrypted value (`"{{ inputs.pw }}"` in a property the
executor renders, such as a Subflow's inputs)."""


def _from_text(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if is_encrypted(value) else text


def has_encrypted(value: Any) -> bool:
    """Whether `value` holds an encrypted value anywhere (alone or as a rendered template
    wrote it)."""
    if is_encrypted(value):
        return True
    if isinstance(value, str):
        return value.startswith(_AS_TEXT) and is_encrypted(_from_text(value))
    if isinstance(value, dict):
        return any(has_encrypted(v) for v in value.values())
    if isinstance(value, list):
        return any(has_encrypted(v) for v in value)
    return False


def shown(value: Any) -> Any:
    """`value` as the API shows it: each encrypted value replaced by `******`."""
    if is_encrypted(value) or is_sealed(value) or (isinstance(value, str) and has_encrypted(value)):
        return MASK
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(v) for v in value]
    return value


# --- sealed values: what an execution records of its users' data --------------------------------

SEALED_TYPE = "io.tiercel.datatype:sealed"
"""The `type` of a value an event records sealed with its execution's key (opened on read)."""
ERASED = "<erased>"
"""What a sealed (or SECRET) value of a purged execution reads as: its key is gone."""
_SEALED_AAD = b"tiercel:sealed"
_SEALING_CACHE = 4096

_PLACES: dict[type[ev.Event], tuple[tuple[str, str | None], ...]] = {
    ev.ExecutionCreated: (("inputs", None),),
    ev.ExecutionResumeRequested: (("inputs", None),),
    ev.SubflowExecutionRequested: (("inputs", None),),
    ev.TaskRunStateChanged: (("outputs", "onResume"),),
}
"""Where events hold what users gave an execution: each value of these maps is sealed (a
field name alone: the map is the field; with a key: the map is that entry of the field). A
Pause task's `onResume` output is the resume's inputs again, as the executor records them."""

_sealing_keys: OrderedDict[str, bytes] = OrderedDict()
"""Keys this process made or read recently, for sealing only (a seal with a key another
process destroyed meanwhile is merely unreadable); opening always reads `execution_keys`,
so a purge is seen by every process at once."""
_sealing_lock = threading.Lock()  # appends run in the database adapter's threads


def is_sealed(value: Any) -> bool:
    """Whether `value` is a sealed value as events hold it."""
    return (
        isinstance(value, dict)
        and len(value) == 2
        and value.get("type") == SEALED_TYPE
        and isinstance(value.get("value"), str)
    )


def seal_value(key: bytes, value: Any) -> dict[str, str]:
    """`value` (any JSON) sealed with an execution's key, as events record it."""
    return {"type": SEALED_TYPE, "value": encrypt(key, _json_bytes(value), _SEALED_AAD)}


def open_value(key: bytes, sealed: dict[str, Any]) -> Any:
    """The value `seal_value` sealed; `ValueError` when made with another key or changed."""
    return json.loads(decrypt(key, sealed["value"], _SEALED_AAD), parse_float=_as_jsonb_reads)


def _as_jsonb_reads(text: str) -> float | int:
    """A JSON number as it reads back from a `jsonb` column, where clear values were kept: an
    exponent form of a whole number (`1e+30`) comes back as that exact integer."""
    if "e" in text or "E" in text:
        exact = decimal.Decimal(text)
        # Bounded as PostgreSQL bounds numerics (and far below): 1e999999 stays a float.
        if exact.is_finite() and exact.adjusted() < 1000 and exact == exact.to_integral_value():
            return int(exact)
    return float(text)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _maps(event: ev.Event) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
    """The maps of `event` whose values are sealed: (field, key in it or None, the map)."""
    for name, key in _PLACES.get(type(event), ()):
        holder = getattr(event, name)
        if not isinstance(holder, dict):
            continue
        values: Any = holder if key is None else holder.get(key)
        if isinstance(values, dict) and values:
            yield name, key, values


def _changed(event: ev.Event, change: Callable[[Any], Any]) -> ev.Event:
    """`event` with `change` applied to each value of its sealed maps (itself when none
    changed)."""
    changes: dict[str, Any] = {}
    for name, key, values in list(_maps(event)):
        new = {k: change(v) for k, v in values.items()}
        if all(new[k] is values[k] for k in values):
            continue
        holder = changes.get(name, getattr(event, name))
        changes[name] = new if key is None else {**holder, key: new}
    return msgspec.structs.replace(event, **changes) if changes else event


def _to_seal(event: ev.Event) -> bool:
    return any(
        not (is_sealed(v) or is_encrypted(v))
        for _, _, values in _maps(event)
        for v in values.values()
    )


def _closed(event: ev.Event) -> bool:
    return any(
        is_sealed(v) or is_encrypted(v) for _, _, values in _maps(event) for v in values.values()
    )


def _keys_for_sealing(
    conn: psycopg.Connection[Any], execution_ids: Iterable[str]
) -> dict[str, bytes]:
    """The key of each execution, made for those that have none, in one statement: the keys
    stored before win (a retried creation, a retry sharing its origin's key)."""
    keys: dict[str, bytes] = {}
    wanted = sorted(set(execution_ids))
    for _ in range(3):
        missing = [x for x in wanted if x not in keys]
        if not missing:
            break
        made = [_wrap(os.urandom(32)) for _ in missing]
        rows = conn.execute(
            "WITH made AS (INSERT INTO execution_keys (execution_id, key, wrapped)"
            " SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bool[])"
            " ON CONFLICT (execution_id) DO NOTHING RETURNING execution_id, key, wrapped)"
            " SELECT execution_id, key, wrapped FROM made UNION ALL"
            " SELECT execution_id, key, wrapped FROM execution_keys WHERE execution_id = ANY(%s)",
            (missing, [m[0] for m in made], [m[1] for m in made], missing),
        ).fetchall()
        # A key another transaction committed after this statement's snapshot shows in
        # neither half: the next round reads it.
        for execution_id, key, wrapped in rows:
            keys[execution_id] = _unwrap(key, bool(wrapped), execution_id)
    for execution_id, key in keys.items():
        _remember(execution_id, key)
    return keys


def _remember(execution_id: str, key: bytes) -> None:
    with _sealing_lock:
        _sealing_keys[execution_id] = key
        _sealing_keys.move_to_end(execution_id)
        while len(_sealing_keys) > _SEALING_CACHE:
            _sealing_keys.popitem(last=False)


def _remembered(execution_ids: Iterable[str]) -> dict[str, bytes]:
    with _sealing_lock:
        return {x: k for x in execution_ids if (k := _sealing_keys.get(x)) is not None}


def seal_appends(
    conn: psycopg.Connection[Any], requests: Sequence[Append]
) -> tuple[Sequence[Append], dict[str, bytes]]:
    """`requests` with what users gave each execution sealed with its key (see the module's
    description), and the keys used. The store calls it before an append; a request holding
    nothing to seal costs nothing, and the keys of the others cost one statement at most."""
    wanted = {
        xid
        for r in requests
        for e in r.events
        if type(e) in _PLACES and (xid := getattr(e, "executionId", None)) and _to_seal(e)
    }
    if not wanted:
        return requests, {}
    keys = _remembered(wanted)
    if len(keys) < len(wanted):
        keys.update(_keys_for_sealing(conn, wanted - set(keys)))
    out = []
    for r in requests:
        events = [_seal_event(e, keys) for e in r.events]
        changed = any(a is not b for a, b in zip(events, r.events, strict=True))
        out.append(msgspec.structs.replace(r, events=events) if changed else r)
    return out, keys


def _seal_event(event: ev.Event, keys: dict[str, bytes]) -> ev.Event:
    key = keys.get(getattr(event, "executionId", None) or "")
    if key is None or type(event) not in _PLACES:
        return event
    return _changed(event, lambda v: v if is_sealed(v) or is_encrypted(v) else seal_value(key, v))


def open_events(
    conn: psycopg.Connection[Any],
    events: list[StoredEvent],
    known: dict[str, bytes] | None = None,
) -> list[StoredEvent]:
    """`events` as readers see them: sealed values opened with their execution's key, read
    once per execution in one statement (none when nothing is sealed, or `known` has the
    key). Once the key is destroyed they, and SECRET values, read as `<erased>`; a key this
    process cannot unwrap leaves them sealed, which `unopened` reports."""
    wanted = {
        xid
        for e in events
        if type(e.event) in _PLACES and (xid := e.execution_id) and _closed(e.event)
    }
    if not wanted:
        return events
    keys: dict[str, bytes | None] = {x: k for x, k in (known or {}).items() if x in wanted}
    missing = sorted(wanted - set(keys))
    if missing:
        rows = conn.execute(
            "SELECT execution_id, key, wrapped FROM execution_keys WHERE execution_id = ANY(%s)",
            (missing,),
        ).fetchall()
        for execution_id, key, wrapped in rows:
            try:
                keys[execution_id] = _unwrap(key, bool(wrapped), execution_id)
            except SecretsUnavailable:
                keys[execution_id] = None  # left sealed: `unopened` says why where it matters
    out = []
    for e in events:
        xid = e.execution_id
        if xid not in wanted:
            out.append(e)
            continue
        if xid not in keys:
            opened = _changed(e.event, lambda v: ERASED if is_sealed(v) or is_encrypted(v) else v)
        else:
            opened = _open_event(e.event, keys[xid])
        out.append(e if opened is e.event else msgspec.structs.replace(e, event=opened))
    return out


def _open_event(event: ev.AnyEvent, key: bytes | None) -> Any:
    if key is None:
        return event

    def open_one(value: Any) -> Any:
        if not is_sealed(value):
            return value  # SECRET values stay encrypted: the worker decrypts them for a task
        try:
            return open_value(key, value)
        except (ValueError, UnicodeDecodeError):
            return value  # sealed with another key: left sealed, `unopened` says so

    return _changed(event, open_one)


def unopened(event: ev.Event) -> str | None:
    """Why a sealed value of `event` was not opened (None when none is left sealed)."""
    for name, _, values in _maps(event):
        if any(is_sealed(v) for v in values.values()):
            return (
                f"The {name} of {type(event).__name__} are sealed with the key of execution "
                f"{getattr(event, 'executionId', '?')}, which this process cannot read: every "
                f"server and worker needs the same {KEY_ENV}"
            )
    return None


def erased(history: Iterable[StoredEvent]) -> bool:
    """Whether `history` (as read) held values of its users that were erased by a purge:
    decisions made on them cannot be made again."""
    return any(
        v == ERASED for e in history for _, _, values in _maps(e.event) for v in values.values()
    )


# --- masking ---------------------------------------------------------------------------------------


def _forms(value: str) -> set[str]:
    """`value` and what a script is likely to print instead of it: each of its lines (a
    multi-line value is printed line by line), base64 (standard and URL-safe, with and without
    the newline `echo` adds), hex, URL encoding, and the escaped text of a JSON or Python
    string."""
    forms = {value}
    if len(value) < SHORT:
        return forms
    data = value.encode()
    for line in value.splitlines():
        if len(line.strip()) >= SHORT:
            forms.add(line.strip())
    for raw in (data, data + b"\n"):
        for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
            forms.add(encoded)  # the padded form first, being longer
            forms.add(encoded.rstrip("="))
    forms.add(data.hex())
    forms.add(data.hex().upper())
    forms.add(urllib.parse.quote(value, safe=""))
    forms.add(urllib.parse.quote_plus(value, safe=""))
    forms.add(json.dumps(value)[1:-1])
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    forms.add(repr(value)[1:-1])
    return {f for f in forms if f}


class Masker:
    """Replaces the secret values of one attempt, and their encodings, by `******`."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        # Templates render in worker threads (secret() adds values there) while the worker
        # masks log lines on the event loop.
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        """Mask `value` (and its encodings) from now on; an empty value masks nothing."""
        with self._lock:
            if value and value not in self._values:
                self._values.add(value)
                self._pattern = None

    def __bool__(self) -> bool:
        return bool(self._values)

    def _compiled(self) -> re.Pattern[str]:
        with self._lock:
            return self._compile()

    def _compile(self) -> re.Pattern[str]:
        if self._pattern is None:
            long: set[str] = set()
            short: set[str] = set()
            for value in self._values:
                for form in _forms(value):
                    (short if len(form) < SHORT else long).add(form)
            # Longest first: at a given place the longest form is replaced, not its start.
            parts = [re.escape(f) for f in sorted(long, key=len, reverse=True)]
            parts += [
                rf"(?<![0-9A-Za-z]){re.escape(f)}(?![0-9A-Za-z])"
                for f in sorted(short, key=len, reverse=True)
            ]
            self._pattern = re.compile("|".join(parts))
        return self._pattern

    def text(self, text: str) -> str:
        """`text` with every secret value in it masked."""
        if not self._values or not text:
            return text
        return self._compiled().sub(MASK, text)

    def value(self, value: Any) -> Any:
        """`value` (text, or lists and maps of values, keys included) masked throughout."""
        if not self._values:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value
