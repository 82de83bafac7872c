"""Forgehall: a self-hosted control plane where humans and AI coding agents work as one team."""

__version__ = "0.1.0"
