"""Settings files: Kestra's keys read as Kestra documents them, wrong values named."""

from __future__ import annotations

import pytest
import yaml

from engine.config import (
    ConfigError,
    database_url_from_jdbc,
    exposed_envs,
    read_settings,
    template_variables,
)
from engine.templating import render

KESTRA_FILE = """
datasources:
  postgres:
    url: jdbc:postgresql://db.internal:5433/kestra?sslmode=require
    driver-class-name: org.postgresql.Driver
    username: kestra
    password: "k3str@/4"
kestra:
  repository:
    type: postgres
  queue:
    type: postgres
  storage:
    type: local
    local:
      base-path: /srv/kestra/storage
  tasks:
    tmp-dir:
      path: /srv/kestra/tmp
  variables:
    env-vars-prefix: MYCO_
    globals:
      environment: dev
      myVar: hello
      nested:
        region: eu
  server:
    basic-auth:
      enabled: false
micronaut:
  server:
    port: 8090
"""


def _read(text: str):  # type: ignore[no-untyped-def]
    return read_settings(yaml.safe_load(text), "Config file test.yml")


def test_kestra_application_file_gives_tiercel_settings() -> None:
    settings = _read(KESTRA_FILE)
    values = settings.values
    assert values["database-url"] == (
        "postgresql://kestra:k3str%40%2F4@db.internal:5433/kestra?sslmode=require"
    )
    assert values["storage-dir"] == "/srv/kestra/storage"
    assert values["tmp-dir"] == "/srv/kestra/tmp"
    assert values["env-vars-prefix"] == "MYCO_"
    assert values["globals"]["environment"] == "dev"
    assert values["port"] == 8090
    assert values["kestra"]["server"]["basic-auth"]["enabled"] is False
    assert settings.unknown == []


def test_tiercel_own_key_wins_over_kestra_key() -> None:
    settings = _read(
        "database-url: postgresql://mine/db\n"
        "datasources: {postgres: {url: 'jdbc:postgresql://theirs/db'}}\n"
    )
    assert settings.values["database-url"] == "postgresql://mine/db"


def test_unknown_keys_are_listed_each_by_its_dotted_name() -> None:
    settings = _read(
        "port: 8081\nworker_slot: 3\n"
        "kestra:\n  url: http://localhost:8080/\n  variables:\n    cache-enabled: false\n"
    )
    assert settings.unknown == ["worker_slot", "kestra.url", "kestra.variables.cache-enabled"]
    assert settings.values["port"] == 8081


def test_underscored_tiercel_keys_are_read_as_dashed() -> None:
    assert _read("worker_slots: 4\n").values["worker-slots"] == 4


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("port: eighty\n", "`port` must be a whole number, not the text 'eighty'"),
        ("kestra: {variables: {globals: [a, b]}}\n", "`kestra.variables.globals` must be a map"),
        ("kestra: {storage: {local: {base-path: 3}}}\n", "`kestra.storage.local.base-path`"),
        ("kestra: {tasks: {tmp-dir: {path: [x]}}}\n", "`kestra.tasks.tmp-dir.path`"),
        ("no-auth: 'yes'\n", "`no-auth` must be true or false"),
        ("kestra: {storage: {type: s3}}\n", "`kestra.storage.type`"),
        ("kestra: [1]\n", "`kestra` must be a mapping"),
        ("datasources: {postgres: {url: 'jdbc:mysql://h/db'}}\n", "`datasources.postgres.url`"),
        ("kestra: {variables: {env-vars-prefix: ''}}\n", "env-vars-prefix"),
        ("kestra: {variables: {env-vars-prefix: TIER}}\n", "TIERCEL_"),
    ],
)
def test_wrong_value_is_one_line_naming_its_key(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _read(text)
    message = caught.value.message
    assert named in message and "\n" not in message
    assert message.startswith("Config file test.yml: ")


def test_a_file_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigError):
        _read("- a\n- b\n")


def test_jdbc_url_without_credentials_keeps_its_own() -> None:
    assert database_url_from_jdbc("jdbc:postgresql://u:p@h:5432/db", None, None) == (
        "postgresql://u:p@h:5432/db"
    )


def test_envs_are_the_prefixed_variables_lower_cased_without_prefix() -> None:
    environ = {
        "KESTRA_MY_ENV": "a",
        "KESTRA_Region": "eu",
        "HOME": "/root",
        "DATABASE_URL": "postgresql://secret",
        "TIERCEL_DATABASE_URL": "postgresql://secret",
    }
    assert exposed_envs("KESTRA_", environ) == {"my_env": "a", "region": "eu"}


def test_template_roots_render_globals_and_envs_only() -> None:
    variables = template_variables(
        {"globals": {"environment": "dev", "myVar": "x"}}, {"KESTRA_TEAM": "data", "HOME": "/r"}
    )
    assert render("{{ globals.environment }}/{{ envs.team }}", variables) == "dev/data"
    # Kestra shows a camelCase global under its hyphenated name too.
    assert render("{{ globals['my-var'] }}{{ globals.myVar }}", variables) == "xx"
    assert variables["envs"] == {"team": "data"}


def test_configured_prefix_replaces_the_default() -> None:
    variables = template_variables({"env-vars-prefix": "ENV_"}, {"ENV_A": "1", "KESTRA_B": "2"})
    assert variables["envs"] == {"a": "1"}


def test_keys_read_elsewhere_are_not_reported_unknown() -> None:
    settings = _read(
        "secret-key: abc\nlog-format: json\n"
        "kestra: {encryption: {secret-key: abc}, server: {basic-auth: {username: a, password: b}}}\n"
    )
    assert settings.unknown == []
