"""The web UI, assembled: every page router and the error pages (used by ``create_app``)."""

from __future__ import annotations

from fastapi import FastAPI

from forgehall.web import account, agents, board, evidence, routes, workspace
from forgehall.web.pages import install_page_errors

ROUTERS = (
    routes.router,
    board.router,
    workspace.router,
    agents.router,
    evidence.router,
    account.router,
)


def install(app: FastAPI) -> None:
    """Mount the pages; call after the API's error handlers are installed."""
    for router in ROUTERS:
        app.include_router(router)
    install_page_errors(app)
