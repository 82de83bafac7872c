"""Documentation is part of the feature: generated references are current, and every
setting, command, metric and background service is documented."""

from __future__ import annotations

import re
from pathlib import Path

from forgehall.app import BACKGROUND_SERVICES
from forgehall.cli.reference import command_paths, render_cli_markdown
from forgehall.core.metrics import METRIC_NAMES, Metrics
from forgehall.settings import Settings, render_configuration_markdown

DOCS = Path(__file__).parent.parent / "docs"
README = Path(__file__).parent.parent / "README.md"


def test_configuration_reference_is_current() -> None:
    assert (DOCS / "configuration.md").read_text() == render_configuration_markdown(), (
        "docs/configuration.md is stale: run `make docs`"
    )


def test_every_setting_is_documented_with_a_description() -> None:
    text = (DOCS / "configuration.md").read_text()
    for name, info in Settings.model_fields.items():
        assert info.description, f"setting {name} has no description"
        assert f"`FORGEHALL_{name.upper()}`" in text


def test_cli_reference_is_current_and_lists_every_command() -> None:
    text = (DOCS / "cli.md").read_text()
    assert text == render_cli_markdown(), "docs/cli.md is stale: run `make docs`"
    for path in command_paths():
        assert f"## `{path}`" in text


def test_every_metric_is_documented() -> None:
    exposed = {
        family.name
        for family in Metrics(
            read_pool=lambda: {"in_use": 0, "idle": 0, "max": 1}
        ).registry.collect()
    }
    # Counters are collected under their base name; the documented names carry _total.
    assert {re.sub(r"_total$", "", n) for n in METRIC_NAMES} == exposed
    operations = (DOCS / "operations.md").read_text()
    for name in METRIC_NAMES:
        assert f"`{name}`" in operations, f"metric {name} is missing from docs/operations.md"


def test_every_background_service_is_documented() -> None:
    operations = (DOCS / "operations.md").read_text()
    for service in BACKGROUND_SERVICES:
        assert f"`{service.name}`" in operations


def test_readme_gives_the_two_setup_commands() -> None:
    text = README.read_text()
    block = text.split("## Set up on a fresh machine", 1)[1].split("```sh", 1)[1]
    commands = [
        line.split("#")[0].strip() for line in block.split("```", 1)[0].splitlines() if line.strip()
    ]
    assert commands == ["make up", "make test"]
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "FORGEHALL_REQUIRE_POSTGRES=1" in ci
    assert "make test" in ci


def test_openapi_document_is_current_and_complete() -> None:
    from forgehall.openapi import openapi_document, render_openapi

    assert (DOCS / "openapi.json").read_text() == render_openapi(), (
        "docs/openapi.json is stale: run `make docs`"
    )
    document = openapi_document()
    assert "Problem" in document["components"]["schemas"]
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            name = f"{method.upper()} {path}"
            assert operation.get("summary"), f"{name} has no summary"
            if path.startswith("/api/v1/") or path.startswith("/auth/"):
                for status in ("401", "403", "404", "422", "429"):
                    assert status in operation["responses"], f"{name} lacks {status}"
                checked += 1
    assert checked > 40


def test_every_daemon_protocol_route_is_documented() -> None:
    from pydantic import SecretStr

    from forgehall.app import create_app, iter_api_routes

    text = (DOCS / "daemon-protocol.md").read_text()
    app = create_app(Settings(jwt_secret=SecretStr("x" * 40)))
    routes = [
        f"{method} {route.path}"
        for route in iter_api_routes(app.routes)
        if route.path.startswith("/api/v1/daemon/")
        for method in sorted(route.methods)
    ]
    assert len(routes) >= 11
    missing = [name for name in routes if f"`{name}`" not in text]
    assert missing == [], f"daemon protocol routes missing from docs/daemon-protocol.md: {missing}"
