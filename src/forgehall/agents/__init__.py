"""Agents (teammates with a profile), runtimes and the task queue."""
