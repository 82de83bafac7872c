"""Workspaces, members, roles, invitations, and the one workspace access check."""
