"""Email-code login end to end through the HTTP API and a real SMTP relay (aiosmtpd)."""

from __future__ import annotations

import re
import ssl
from typing import Any

import pytest
from structlog.testing import capture_logs

from forgehall.app import AppOptions, create_app
from forgehall.db.engine import Database
from forgehall.settings import Settings
from tests.conftest import new_client
from tests.identity.conftest import StartRelay


async def _login_through(settings: Settings, db: Database, read_code: Any) -> None:
    app = create_app(settings, db=db, options=AppOptions(run_services=False))
    async with app.router.lifespan_context(app), new_client(app) as client:
        assert (
            await client.post("/auth/send-code", json={"email": "ann@example.com"})
        ).status_code == 202
        code = read_code()
        verified = await client.post(
            "/auth/verify-code", json={"email": "ann@example.com", "code": code}
        )
        assert verified.status_code == 200, verified.text
        assert (await client.get("/api/v1/me")).json()["email"] == "ann@example.com"


def _smtp_settings(settings: Settings, port: int, **extra: Any) -> Settings:
    return Settings(
        **{
            **settings.model_dump(),
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_tls_insecure": True,
            "mail_from": "Forgehall <fh@example.com>",
            **extra,
        }
    )


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_login_code_arrives_by_smtp(
    settings: Settings, db: Database, start_relay: StartRelay, server_tls: ssl.SSLContext, mode: str
) -> None:
    if mode == "starttls":
        relay = start_relay(tls_context=server_tls, require_starttls=True)
    else:
        relay = start_relay(ssl_context=server_tls)

    def read_code() -> str:
        (received,) = relay.handler.received
        assert received.tls, "the code must travel over TLS"
        assert received.rcpt_tos == ["ann@example.com"]
        match = re.search(r"\b(\d{6})\b", received.message.get_content())
        assert match
        return match.group(1)

    await _login_through(_smtp_settings(settings, relay.port, smtp_tls=mode), db, read_code)


async def test_without_a_mail_backend_the_code_is_printed_to_the_log(
    settings: Settings, db: Database
) -> None:
    with capture_logs() as logs:

        def read_code() -> str:
            (event,) = [e for e in logs if e["event"] == "mail.not_configured"]
            assert event["to"] == "ann@example.com"
            match = re.search(r"\b(\d{6})\b", event["text"])
            assert match
            return match.group(1)

        await _login_through(settings, db, read_code)
