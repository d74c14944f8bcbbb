"""Kestra's core task types (`io.kestra.plugin.core.*`), registered on import."""

from plugins.core import debug, execution, flow, log

__all__ = ["debug", "execution", "flow", "log"]
