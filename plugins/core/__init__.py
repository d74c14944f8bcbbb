"""Kestra's core task types (`io.kestra.plugin.core.*`), registered on import."""

from plugins.core import (
    debug,
    execution,
    flow,
    flow_trigger,
    http,
    http_trigger,
    kv,
    log,
    output,
    purge,
    schedule,
    state,
    storage,
    trigger,
    webhook,
)

__all__ = [
    "debug",
    "execution",
    "flow",
    "flow_trigger",
    "http",
    "http_trigger",
    "kv",
    "log",
    "output",
    "purge",
    "schedule",
    "state",
    "storage",
    "trigger",
    "webhook",
]
