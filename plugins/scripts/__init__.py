"""Script tasks (`io.kestra.plugin.scripts.*`): shell and Python, run as real subprocesses."""

from plugins.scripts import python, shell

__all__ = ["python", "shell"]
