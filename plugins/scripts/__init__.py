"""Script tasks (`io.kestra.plugin.scripts.*`): shell and Python, run as real subprocesses."""
