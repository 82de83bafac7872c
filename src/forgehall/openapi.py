"""Write the OpenAPI document to ``docs/openapi.json`` (``make docs``); a test fails when
the checked-in copy is stale."""

from __future__ import annotations

import json
from typing import Any

from pydantic import SecretStr

from forgehall.app import create_app
from forgehall.settings import Settings


def openapi_document() -> dict[str, Any]:
    # A throwaway app: the document depends on the routes, not on the settings.
    app = create_app(Settings(jwt_secret=SecretStr("x" * 40)))
    return app.openapi()


def render_openapi() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render_openapi(), end="")
