"""Cross-cutting infrastructure: logging, errors, metrics, HTTP middleware, services.

Imports no domain package.
"""
