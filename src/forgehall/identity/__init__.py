"""Accounts, login (email codes, OAuth/OIDC), sessions and access tokens."""
