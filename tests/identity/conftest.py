"""Real SMTP relays (aiosmtpd) and a self-signed certificate for mail tests."""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from forgehall.identity.mail import (
    OutgoingMail,
)

USERNAME = "forgehall-mailer"
PASSWORD = "pw-Zq8!unique-smtp-secret"
MAIL = OutgoingMail(
    to="alice@example.com",
    subject="Your Forgehall login code",
    text="Your login code is 493817.\nIt expires in 10 minutes.\n",
)


# --- relays --------------------------------------------------------------------------


@dataclass
class Received:
    """One message as the relay saw it."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    host_name: str | None
    tls: bool
    authenticated: bool


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that keeps every accepted message; can refuse recipients."""

    refuse_rcpt: bool = False
    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.refuse_rcpt:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(
            Received(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                message=message,
                host_name=session.host_name,
                tls=server.transport is not None
                and server.transport.get_extra_info("ssl_object") is not None,
                authenticated=bool(session.authenticated),
            )
        )
        return "250 Message accepted for delivery"


def accept_only_our_user(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USERNAME.encode()
        and auth_data.password == PASSWORD.encode()
    )
    # handled=False: aiosmtpd then answers 535 itself instead of staying silent.
    return AuthResult(success=ok, handled=False)


@dataclass
class Relay:
    port: int
    handler: RecordingHandler


StartRelay = Callable[..., Relay]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def start_relay() -> Iterator[StartRelay]:
    """Start aiosmtpd relays on 127.0.0.1 (kwargs go to ``Controller``); all stopped after."""
    controllers: list[Controller] = []

    def start(*, refuse_rcpt: bool = False, **kwargs: Any) -> Relay:
        handler = RecordingHandler(refuse_rcpt=refuse_rcpt)
        port = free_port()
        controller = Controller(
            handler, hostname="127.0.0.1", port=port, server_hostname="relay.test", **kwargs
        )
        controller.start()
        controllers.append(controller)
        return Relay(port=port, handler=handler)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture(scope="session")
def certificate_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def server_tls(certificate_files: tuple[Path, Path]) -> ssl.SSLContext:
    cert_path, key_path = certificate_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context
