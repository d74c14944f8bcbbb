"""Script tasks (`io.kestra.plugin.scripts.*` and Kestra's deprecated
`io.kestra.core.tasks.scripts.*`): shell and Python, run as real subprocesses."""

from plugins.scripts import legacy, python, shell

__all__ = ["legacy", "python", "shell"]
