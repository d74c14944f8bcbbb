"""Settings files (`--config FILE`): Tiercel's own keys, and the keys of Kestra's configuration
that mean something here, so that a Kestra user's `application.yml` works unchanged.

A file is read once, at start. A value of the wrong type is an error naming its key; a key that
nothing reads is a warning naming it (so a typo or a setting Tiercel does not have is never
silently ignored). Kestra's keys are translated to Tiercel's (`kestra.storage.local.base-path` is
`storage-dir`, `datasources.postgres.url` is `database-url`, ...); Tiercel's own spelling wins
when a file has both.

Templates see two roots from here: `{{ globals.* }}` (`kestra.variables.globals`) and
`{{ envs.* }}`, the process environment variables whose name starts with the configured prefix
(`kestra.variables.env-vars-prefix`, default `KESTRA_`), lower-cased and without the prefix, as
Kestra names them. No other environment variable reaches a template.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from engine.errors import TiercelError

DEFAULT_ENV_PREFIX = "KESTRA_"
"""Kestra's historical default (Kestra 0.23 and later default to `ENV_`: set it to keep that)."""

PROTECTED_ENV_PREFIX = "TIERCEL_"
"""Tiercel's own environment variables (database URL, master key, passwords) never reach a
template, whatever the prefix."""


class ConfigError(TiercelError):
    """A settings file cannot be used: its message names the file and the key."""

    status = 400


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_mapping(value: Any) -> bool:
    return isinstance(value, dict)


def _is_text_or_list(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    )


_Check = tuple[Callable[[Any], bool], str]
_INT: _Check = (_is_int, "a whole number")
_NUMBER: _Check = (_is_number, "a number")
_TEXT: _Check = (_is_text, "a text")
_BOOL: _Check = (_is_bool, "true or false")
_MAPPING: _Check = (_is_mapping, "a mapping of names to values")
_TEXTS: _Check = (_is_text_or_list, "a text or a list of texts")
_OPTIONAL_TEXT: _Check = (lambda v: v is None or isinstance(v, str), "a text")

TIERCEL_KEYS: dict[str, _Check] = {
    "database-url": _TEXT,
    "data-dir": _TEXT,
    "port": _INT,
    "host": _TEXT,
    "no-auth": _BOOL,
    "flows": _TEXT,
    "worker-slots": _INT,
    "heartbeat-timeout": _NUMBER,
    "max-body-bytes": _INT,
    "max-upload-bytes": _INT,
    "max-webhook-bytes": _INT,
    "admin-username": _TEXT,
    "admin-password": _TEXT,
    "allowed-origins": _TEXTS,
    "log-format": _TEXT,
    "secret-key": _TEXT,
    "storage-dir": _TEXT,
    "tmp-dir": _TEXT,
    "globals": _MAPPING,
    "env-vars-prefix": _TEXT,
}
"""Tiercel's own settings (at the top of the file or under `tiercel:`) and their types."""

KESTRA_KEYS: dict[str, tuple[str | None, _Check]] = {
    "kestra.variables.globals": ("globals", _MAPPING),
    "kestra.variables.env-vars-prefix": ("env-vars-prefix", _TEXT),
    "kestra.storage.local.base-path": ("storage-dir", _TEXT),
    "kestra.tasks.tmp-dir.path": ("tmp-dir", _TEXT),
    "kestra.server.basic-auth.enabled": (None, _BOOL),
    "kestra.server.basic-auth.username": (None, _TEXT),
    "kestra.server.basic-auth.password": (None, _TEXT),
    "kestra.encryption.secret-key": (None, _TEXT),
    "micronaut.server.port": ("port", _INT),
    "datasources.postgres.url": (None, _TEXT),
    "datasources.postgres.username": (None, _OPTIONAL_TEXT),
    "datasources.postgres.password": (None, _OPTIONAL_TEXT),
    "datasources.postgres.driver-class-name": (None, _TEXT),
}
"""Kestra's keys Tiercel reads, with the Tiercel setting each one gives (None: read where it
is used, e.g. `kestra.server.basic-auth` by the authentication settings)."""

_ONLY_VALUE: dict[str, tuple[str, str]] = {
    "kestra.storage.type": ("local", "Tiercel keeps internal storage in a local folder"),
    "kestra.repository.type": ("postgres", "Tiercel keeps everything in PostgreSQL"),
    "kestra.queue.type": ("postgres", "Tiercel keeps everything in PostgreSQL"),
}
"""Kestra's keys with one value Tiercel can honour: that value is accepted, any other refused."""


@dataclass
class Settings:
    """What a settings file says, checked."""

    values: dict[str, Any] = field(default_factory=dict)
    """Tiercel's settings by their dashed name (`database-url`, `storage-dir`, ...), Kestra's
    keys translated; `kestra` holds Kestra's mapping for the settings that read it directly."""
    unknown: list[str] = field(default_factory=list)
    """Dotted keys that nothing reads."""


def _dotted(data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The leaves of nested mappings by dotted path (a mapping-valued key such as `globals` is
    a leaf where `KESTRA_KEYS` says so)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and path not in KESTRA_KEYS:
            out.update(_dotted(value, path))
        else:
            out[path] = value
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return repr(value)


def _check(origin: str, key: str, value: Any, check: _Check) -> None:
    accepts, what = check
    if not accepts(value):
        raise ConfigError(f"{origin}: `{key}` must be {what}, not {_kind(value)}")


def _canonical(key: str) -> str:
    """Tiercel's keys are dashed; `database_url` is read as `database-url`."""
    return str(key).replace("_", "-")


def read_settings(data: Any, origin: str) -> Settings:
    """Check a settings file's parsed YAML and translate Kestra's keys to Tiercel's.

    Raise `ConfigError` (one line naming the key) for a value of the wrong type; list the keys
    nothing reads in `Settings.unknown`."""
    if data is None:
        return Settings()
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a settings file must be a YAML mapping, not {_kind(data)}")
    settings = Settings()
    own = data.get("tiercel", data)
    if not isinstance(own, dict):
        raise ConfigError(f"{origin}: `tiercel` must be a mapping of settings, not {_kind(own)}")
    foreign = {"kestra", "datasources", "micronaut", "tiercel"}
    for key, value in own.items():
        if key in foreign:
            continue
        name = _canonical(key)
        check = TIERCEL_KEYS.get(name)
        if check is None:
            settings.unknown.append(str(key) if own is data else f"tiercel.{key}")
            continue
        _check(origin, str(key), value, check)
        settings.values[name] = value
    kestra_side = {k: data[k] for k in ("kestra", "datasources", "micronaut") if k in data}
    for root, value in kestra_side.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: `{root}` must be a mapping, not {_kind(value)}")
    for key, value in _dotted(kestra_side, "").items():
        if key in _ONLY_VALUE:
            wanted, why = _ONLY_VALUE[key]
            if value != wanted:
                raise ConfigError(
                    f"{origin}: `{key}` is {_kind(value)}, but {why}: set it to {wanted} or "
                    "remove it"
                )
            continue
        known = KESTRA_KEYS.get(key)
        if known is None:
            settings.unknown.append(key)
            continue
        target, check = known
        _check(origin, key, value, check)
        if target is not None:
            settings.values.setdefault(target, value)
    if isinstance(data.get("kestra"), dict):
        settings.values["kestra"] = data["kestra"]  # kestra.server.basic-auth, read by the CLI
    datasource = (data.get("datasources") or {}).get("postgres")
    if isinstance(datasource, dict) and datasource.get("url") is not None:
        url = database_url_from_jdbc(
            datasource["url"], datasource.get("username"), datasource.get("password"), origin
        )
        settings.values.setdefault("database-url", url)
    prefix = settings.values.get("env-vars-prefix")
    if prefix is not None:
        check_env_prefix(prefix, origin)
    return settings


def database_url_from_jdbc(
    url: str, username: str | None, password: str | None, origin: str = "settings"
) -> str:
    """A PostgreSQL URL from Kestra's `datasources.postgres` (a JDBC URL with the user and
    password beside it): `jdbc:postgresql://host:5432/db?x=y` becomes
    `postgresql://user:password@host:5432/db?x=y`."""
    text = url.strip()
    text = text.removeprefix("jdbc:")
    parts = urlsplit(text)
    # A host is needed, in the authority or (a local socket's folder) as a `host` parameter.
    has_host = bool(parts.netloc) or "host=" in parts.query
    if parts.scheme not in ("postgresql", "postgres") or not has_host:
        raise ConfigError(
            f"{origin}: `datasources.postgres.url` must be a PostgreSQL URL such as "
            f"jdbc:postgresql://host:5432/kestra, not {url!r}"
        )
    host = parts.netloc.rsplit("@", 1)[-1]
    credentials = ""
    if username:
        credentials = quote(str(username), safe="")
        if password:
            credentials += ":" + quote(str(password), safe="")
        credentials += "@"
    elif "@" in parts.netloc:
        credentials = parts.netloc.rsplit("@", 1)[0] + "@"
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return f"postgresql://{credentials}{host}{rest}"


def check_env_prefix(prefix: Any, origin: str = "settings") -> str:
    """The prefix of the environment variables templates see, refused when it is empty or
    would take in Tiercel's own variables."""
    if not isinstance(prefix, str) or not prefix.strip():
        raise ConfigError(
            f"{origin}: `kestra.variables.env-vars-prefix` must be a non-empty text such as "
            "KESTRA_ (an empty prefix would show every environment variable to every flow)"
        )
    if PROTECTED_ENV_PREFIX.startswith(prefix) or prefix.startswith(PROTECTED_ENV_PREFIX):
        raise ConfigError(
            f"{origin}: `kestra.variables.env-vars-prefix` {prefix!r} would show Tiercel's own "
            f"{PROTECTED_ENV_PREFIX}* variables (database URL, keys) to flows: choose another"
        )
    return prefix


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def globals_view(values: Mapping[str, Any]) -> dict[str, Any]:
    """`{{ globals.* }}`: the configured values, and a camelCase key also under its hyphenated
    name (`myVar` as `globals['my-var']`), the name Kestra gives it."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        shown = globals_view(value) if isinstance(value, dict) else value
        out[str(key)] = shown
        hyphenated = _CAMEL.sub(r"-\1", str(key)).lower()
        out.setdefault(hyphenated, shown)
    return out


def exposed_envs(prefix: str, environ: Mapping[str, str]) -> dict[str, str]:
    """`{{ envs.* }}`: each environment variable named `<prefix>NAME`, as `name` (lower case,
    without the prefix); Tiercel's own variables never."""
    out: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(prefix) or name.startswith(PROTECTED_ENV_PREFIX):
            continue
        short = name[len(prefix) :].lower()
        if short:
            out[short] = value
    return out


def template_variables(
    settings: Mapping[str, Any], environ: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """The `globals` and `envs` roots that workers add to every render, from the settings and
    the process environment as they are at start."""
    prefix = check_env_prefix(settings.get("env-vars-prefix") or DEFAULT_ENV_PREFIX)
    configured = settings.get("globals") or {}
    return {
        "globals": globals_view(configured if isinstance(configured, dict) else {}),
        "envs": exposed_envs(prefix, environ),
    }
