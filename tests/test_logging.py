"""Structured logs: secrets never reach the output, request ids are on every line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from forgehall.core.logging import REDACTED, SecretRedactor, configure_logging


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    configure_logging(level="info", fmt="console")


def test_redactor_scrubs_nested_values() -> None:
    redactor = SecretRedactor(["hunter2-hunter2", "hunter2"])
    event = redactor(
        None,
        "info",
        {
            "event": "login hunter2-hunter2",
            "nested": {"list": ["x hunter2 y"]},
            "n": 3,
        },
    )
    assert event == {"event": f"login {REDACTED}", "nested": {"list": [f"x {REDACTED} y"]}, "n": 3}


def test_json_lines_with_context_and_no_secret(log_stream: io.StringIO) -> None:
    configure_logging(level="info", fmt="json", secrets=["super-secret-value"], stream=log_stream)
    structlog.contextvars.bind_contextvars(request_id="rid-1")
    try:
        structlog.get_logger("t").info("thing.happened", token="super-secret-value")
        logging.getLogger("uvicorn.error").warning("stdlib says super-secret-value")
    finally:
        structlog.contextvars.clear_contextvars()
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["thing.happened", f"stdlib says {REDACTED}"]
    assert all(line["request_id"] == "rid-1" for line in lines)
    assert lines[0]["token"] == REDACTED
    assert "super-secret-value" not in log_stream.getvalue()


def test_level_filters(log_stream: io.StringIO) -> None:
    configure_logging(level="warning", fmt="json", stream=log_stream)
    structlog.get_logger("t").info("quiet")
    structlog.get_logger("t").warning("loud")
    assert [json.loads(x)["event"] for x in log_stream.getvalue().splitlines()] == ["loud"]


def test_tracebacks_are_plain_and_scrubbed_in_console_mode(log_stream: io.StringIO) -> None:
    configure_logging(level="info", fmt="console", secrets=["tb-secret-value"], stream=log_stream)
    token = "tb-secret-value"  # a local that a "pretty" traceback would print
    try:
        raise RuntimeError(f"failed with {token}")
    except RuntimeError:
        structlog.get_logger("t").exception("thing.failed")
    output = log_stream.getvalue()
    assert "Traceback (most recent call last)" in output
    assert "tb-secret-value" not in output
    assert REDACTED in output
