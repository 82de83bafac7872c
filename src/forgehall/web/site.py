"""The web UI, assembled: every page router and the error pages (used by ``create_app``)."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from forgehall.web import account, agents, board, evidence, routes, workspace
from forgehall.web.pages import install_page_errors, note_live_position

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
        app.include_router(router, dependencies=[Depends(note_live_position)])
    install_page_errors(app)
