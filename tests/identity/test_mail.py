"""Outgoing mail against real SMTP servers (aiosmtpd) on 127.0.0.1.

Each test starts its own relay — plain, STARTTLS or implicit TLS, with or without AUTH —
using a self-signed certificate generated for ``localhost``/127.0.0.1, and checks what
the relay received, what the mailer logged and that the password never leaks.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import MutableMapping
from email.message import EmailMessage
from typing import Any

import pytest
import structlog

from forgehall.identity.mail import (
    LogMailer,
    MailDeliveryError,
    OutgoingMail,
    SmtpMailer,
    create_mailer,
)
from forgehall.settings import Settings
from tests.identity.conftest import (
    PASSWORD,
    USERNAME,
    StartRelay,
    accept_only_our_user,
    free_port,
)

MAIL = OutgoingMail(
    to="alice@example.com",
    subject="Your Forgehall login code",
    text="Your login code is 493817.\nIt expires in 10 minutes.\n",
)


# --- relays --------------------------------------------------------------------------


def relay_settings(port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "mail_from": "Forgehall <forgehall@example.com>",
        "smtp_ehlo_name": "client.forgehall.test",
    }
    values.update(overrides)
    return Settings(**values)


def body(message: EmailMessage) -> str:
    """The text part as sent, with the CRLF line ends of the wire made plain."""
    content = message.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# --- delivery ------------------------------------------------------------------------


async def test_plain_relay_without_starttls_delivers(start_relay: StartRelay) -> None:
    relay = start_relay()
    with structlog.testing.capture_logs() as logs:
        await SmtpMailer(relay_settings(relay.port)).send(MAIL)

    [received] = relay.handler.received
    assert received.mail_from == "forgehall@example.com"
    assert received.rcpt_tos == ["alice@example.com"]
    assert not received.tls
    message = received.message
    assert message["From"] == "Forgehall <forgehall@example.com>"
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == MAIL.subject
    assert message["Date"]
    assert message["Message-ID"].endswith("@example.com>")
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert body(message) == MAIL.text

    [sent] = events(logs, "mail.sent")
    assert sent["log_level"] == "info"
    assert sent["to"] == MAIL.to
    assert sent["subject"] == MAIL.subject
    assert "493817" not in repr(logs)  # the body (with its code) is never logged


async def test_non_ascii_subject_and_body_survive(start_relay: StartRelay) -> None:
    relay = start_relay()
    mail = OutgoingMail(
        to="jörg@example.com", subject="Anmeldecode für Jörg: 123456", text="Grüße ✓\n"
    )
    await SmtpMailer(relay_settings(relay.port)).send(mail)

    [received] = relay.handler.received
    assert received.rcpt_tos == ["jörg@example.com"]
    assert received.message["Subject"] == mail.subject
    assert body(received.message) == mail.text


async def test_starttls_upgrade_with_insecure_delivers(
    start_relay: StartRelay, server_tls: ssl.SSLContext
) -> None:
    relay = start_relay(tls_context=server_tls, require_starttls=True)
    settings = relay_settings(relay.port, smtp_tls_insecure=True)
    await SmtpMailer(settings).send(MAIL)

    [received] = relay.handler.received
    assert received.tls
    assert body(received.message) == MAIL.text


async def test_starttls_with_verification_refuses_self_signed_certificate(
    start_relay: StartRelay, server_tls: ssl.SSLContext
) -> None:
    relay = start_relay(tls_context=server_tls, require_starttls=True)
    with pytest.raises(MailDeliveryError) as failure:
        await SmtpMailer(relay_settings(relay.port)).send(MAIL)

    message = str(failure.value)
    assert message.startswith(f"could not deliver mail via 127.0.0.1:{relay.port}: ")
    assert "TLS certificate verification failed" in message
    assert "FORGEHALL_SMTP_TLS_INSECURE=true" in message
    assert "\n" not in message
    assert relay.handler.received == []


@pytest.mark.parametrize("mode", ["implicit", "ssl"])
async def test_implicit_tls_delivers(
    start_relay: StartRelay, server_tls: ssl.SSLContext, mode: str
) -> None:
    relay = start_relay(ssl_context=server_tls)
    settings = relay_settings(relay.port, smtp_tls=mode, smtp_tls_insecure=True)
    assert settings.smtp_implicit_tls
    await SmtpMailer(settings).send(MAIL)

    [received] = relay.handler.received
    assert received.tls
    assert received.message["Subject"] == MAIL.subject


async def test_implicit_tls_against_plain_relay_says_to_check_the_tls_mode(
    start_relay: StartRelay,
) -> None:
    relay = start_relay()
    settings = relay_settings(relay.port, smtp_tls="implicit", smtp_tls_insecure=True)
    with pytest.raises(MailDeliveryError, match=r"TLS handshake failed .*FORGEHALL_SMTP_TLS"):
        await SmtpMailer(settings, timeout=5).send(MAIL)
    assert relay.handler.received == []


# --- authentication ------------------------------------------------------------------


async def test_authentication_with_correct_credentials_delivers(start_relay: StartRelay) -> None:
    relay = start_relay(authenticator=accept_only_our_user, auth_require_tls=False)
    settings = relay_settings(relay.port, smtp_username=USERNAME, smtp_password=PASSWORD)
    with structlog.testing.capture_logs() as logs:
        await SmtpMailer(settings).send(MAIL)

    [received] = relay.handler.received
    assert received.authenticated
    assert events(logs, "mail.sent")
    assert PASSWORD not in repr(logs)


async def test_authentication_over_starttls_delivers(
    start_relay: StartRelay, server_tls: ssl.SSLContext
) -> None:
    # aiosmtpd offers AUTH only after the upgrade (auth_require_tls defaults to True).
    relay = start_relay(tls_context=server_tls, authenticator=accept_only_our_user)
    settings = relay_settings(
        relay.port, smtp_username=USERNAME, smtp_password=PASSWORD, smtp_tls_insecure=True
    )
    await SmtpMailer(settings).send(MAIL)

    [received] = relay.handler.received
    assert received.tls
    assert received.authenticated


async def test_wrong_password_fails_without_revealing_it(start_relay: StartRelay) -> None:
    relay = start_relay(authenticator=accept_only_our_user, auth_require_tls=False)
    wrong = "pw-wrong-but-still-secret-77"
    settings = relay_settings(relay.port, smtp_username=USERNAME, smtp_password=wrong)
    with structlog.testing.capture_logs() as logs, pytest.raises(MailDeliveryError) as failure:
        await SmtpMailer(settings).send(MAIL)

    message = str(failure.value)
    assert "authentication failed" in message
    assert "FORGEHALL_SMTP_USERNAME/PASSWORD" in message
    assert wrong not in message
    assert wrong not in repr(failure.value.__cause__)
    assert relay.handler.received == []
    [failed] = events(logs, "mail.failed")
    assert failed["log_level"] == "warning"
    assert failed["to"] == MAIL.to
    assert wrong not in repr(logs)
    assert "493817" not in repr(logs)


async def test_username_without_server_auth_names_the_problem(start_relay: StartRelay) -> None:
    relay = start_relay()  # no authenticator: AUTH is not advertised
    settings = relay_settings(relay.port, smtp_username=USERNAME, smtp_password=PASSWORD)
    with structlog.testing.capture_logs() as logs, pytest.raises(MailDeliveryError) as failure:
        await SmtpMailer(settings).send(MAIL)

    assert "AUTH" in str(failure.value)
    assert PASSWORD not in str(failure.value)
    assert PASSWORD not in repr(logs)


# --- EHLO, refusals, unreachable relays ----------------------------------------------


async def test_ehlo_announces_the_configured_name(start_relay: StartRelay) -> None:
    relay = start_relay()
    settings = relay_settings(relay.port, smtp_ehlo_name="mx-out.forgehall.example")
    await SmtpMailer(settings).send(MAIL)

    [received] = relay.handler.received
    assert received.host_name == "mx-out.forgehall.example"


async def test_ehlo_name_survives_the_starttls_upgrade(
    start_relay: StartRelay, server_tls: ssl.SSLContext
) -> None:
    relay = start_relay(tls_context=server_tls, require_starttls=True)
    settings = relay_settings(
        relay.port, smtp_ehlo_name="mx-out.forgehall.example", smtp_tls_insecure=True
    )
    await SmtpMailer(settings).send(MAIL)

    [received] = relay.handler.received
    assert received.host_name == "mx-out.forgehall.example"


async def test_refused_recipient_is_reported(start_relay: StartRelay) -> None:
    relay = start_relay(refuse_rcpt=True)
    with pytest.raises(MailDeliveryError) as failure:
        await SmtpMailer(relay_settings(relay.port)).send(MAIL)

    message = str(failure.value)
    assert "recipient refused" in message
    assert "alice@example.com" in message
    assert "550" in message


async def test_connection_refused_names_host_and_port() -> None:
    port = free_port()
    with structlog.testing.capture_logs() as logs, pytest.raises(MailDeliveryError) as failure:
        await SmtpMailer(relay_settings(port)).send(MAIL)

    message = str(failure.value)
    assert f"127.0.0.1:{port}" in message
    assert "connection refused" in message
    [failed] = events(logs, "mail.failed")
    assert failed["error"] == message


async def test_silent_relay_times_out() -> None:
    with socket.socket() as listener:  # accepts TCP connections, never says hello
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(MailDeliveryError, match=rf"127\.0\.0\.1:{port}: timed out after"):
            await SmtpMailer(relay_settings(port), timeout=0.3).send(MAIL)


# --- no backend ----------------------------------------------------------------------


async def test_log_mailer_prints_the_whole_mail() -> None:
    with structlog.testing.capture_logs() as logs:
        await LogMailer().send(MAIL)

    [entry] = events(logs, "mail.not_configured")
    assert entry["log_level"] == "warning"
    assert entry["to"] == MAIL.to
    assert entry["subject"] == MAIL.subject
    assert entry["text"] == MAIL.text
    assert "493817" in entry["text"]


def test_create_mailer_picks_the_backend_from_settings() -> None:
    assert isinstance(create_mailer(Settings()), LogMailer)
    assert isinstance(create_mailer(Settings(smtp_host="smtp.example.com")), SmtpMailer)


def test_smtp_mailer_requires_a_host() -> None:
    with pytest.raises(ValueError, match="smtp_host"):
        SmtpMailer(Settings())
