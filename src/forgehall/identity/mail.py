"""Outgoing mail: login codes and invitations, sent through an SMTP relay or the log.

:func:`create_mailer` picks the backend from settings: :class:`SmtpMailer` when
``FORGEHALL_SMTP_HOST`` is set, otherwise :class:`LogMailer`, which prints each mail to
the server log — the documented way to get login codes on an instance without mail.

Invariants:

- The SMTP password is never logged and never part of an error message (server replies
  quoted in errors are scrubbed of it as well).
- Mail bodies are logged only by :class:`LogMailer`, by design; :class:`SmtpMailer` logs
  the recipient and subject, never the body.
- Every delivery failure, whatever its cause (refused connection, timeout, TLS,
  authentication, refused recipient), surfaces as one :class:`MailDeliveryError` whose
  message is a single line saying what to check; the SMTP connection is always closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Protocol

import structlog

from forgehall.settings import Settings

log = structlog.get_logger("forgehall.mail")


@dataclass(frozen=True)
class OutgoingMail:
    """One plain-text mail to one recipient."""

    to: str
    subject: str
    text: str


class MailDeliveryError(Exception):
    """A mail could not be handed to the relay.

    The message is one line meant for an operator (what failed and which setting to
    check); it never contains the SMTP password or the mail body.
    """


class Mailer(Protocol):
    """Anything that can send an :class:`OutgoingMail`."""

    async def send(self, mail: OutgoingMail) -> None:
        """Send ``mail``; raise :class:`MailDeliveryError` when it cannot be delivered."""
        ...


class SmtpMailer:
    """Sends mail through the SMTP relay configured in the Email settings.

    Implicit TLS (``SMTP_SSL``) when ``settings.smtp_implicit_tls``; otherwise a plain
    connection upgraded with STARTTLS whenever the server advertises it. Blocking
    ``smtplib`` runs in a worker thread so the event loop is never held up.
    """

    def __init__(self, settings: Settings, *, timeout: float = 20.0) -> None:
        """Prepare a mailer; no connection is opened until :meth:`send`.

        Args:
            settings: Settings with ``smtp_host`` set.
            timeout: Seconds allowed for connecting and for each server reply.

        Raises:
            ValueError: ``settings.smtp_host`` is not set.
        """
        if not settings.smtp_host:
            raise ValueError("SmtpMailer needs settings.smtp_host")
        self._settings = settings
        self._host = settings.smtp_host
        self._port = settings.smtp_port
        self._timeout = timeout
        password = settings.smtp_password
        self._password = password.get_secret_value() if password is not None else ""

    @property
    def relay(self) -> str:
        """``host:port`` of the relay, as shown in logs and errors."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    async def send(self, mail: OutgoingMail) -> None:
        """Deliver ``mail`` to the relay.

        Raises:
            MailDeliveryError: The relay could not be reached or did not accept the mail.
        """
        try:
            message = self._build_message(mail)
            await asyncio.to_thread(self._deliver, message)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            reason = self._scrub(_describe_failure(exc, self._settings, self._timeout))
            error = MailDeliveryError(f"could not deliver mail via {self.relay}: {reason}")
            log.warning(
                "mail.failed",
                to=mail.to,
                subject=mail.subject,
                relay=self.relay,
                error=str(error),
            )
            raise error from exc
        log.info("mail.sent", to=mail.to, subject=mail.subject, relay=self.relay)

    def _build_message(self, mail: OutgoingMail) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._settings.mail_from
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = formatdate(usegmt=True)
        # The sender's domain keeps make_msgid from resolving this host's FQDN.
        domain = parseaddr(self._settings.mail_from)[1].rpartition("@")[2] or None
        message["Message-ID"] = make_msgid(domain=domain)
        message.set_content(mail.text, subtype="plain", charset="utf-8")
        return message

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self._settings.smtp_tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _deliver(self, message: EmailMessage) -> None:
        """Connect, greet, upgrade, log in and send; runs in a worker thread."""
        settings = self._settings
        context = self._tls_context()
        ehlo_name = settings.smtp_ehlo_name or None
        smtp: smtplib.SMTP
        if settings.smtp_implicit_tls:
            smtp = smtplib.SMTP_SSL(
                self._host,
                self._port,
                local_hostname=ehlo_name,
                timeout=self._timeout,
                context=context,
            )
        else:
            smtp = smtplib.SMTP(
                self._host, self._port, local_hostname=ehlo_name, timeout=self._timeout
            )
        try:
            smtp.ehlo_or_helo_if_needed()
            if not settings.smtp_implicit_tls and smtp.has_extn("starttls"):
                smtp.starttls(context=context)
                smtp.ehlo()
            if settings.smtp_username:
                smtp.login(settings.smtp_username, self._password)
            refused = smtp.send_message(message)
            if refused:
                raise smtplib.SMTPRecipientsRefused(refused)
        except BaseException:
            # No QUIT: after a failed TLS handshake the server may not understand it.
            smtp.close()
            raise
        # The mail is accepted at this point; a failed goodbye does not undo that.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
        smtp.close()

    def _scrub(self, text: str) -> str:
        if self._password and self._password in text:
            return text.replace(self._password, "[REDACTED]")
        return text


class LogMailer:
    """The backend when no relay is configured: each mail is printed to the server log.

    This is how an operator of an instance without mail reads login codes, so the full
    text is logged on purpose (event ``mail.not_configured``, level warning).
    """

    def __init__(self) -> None:
        pass

    async def send(self, mail: OutgoingMail) -> None:
        """Log ``mail`` in full instead of sending it."""
        log.warning("mail.not_configured", to=mail.to, subject=mail.subject, text=mail.text)


def create_mailer(settings: Settings) -> Mailer:
    """Return the mailer the settings ask for: SMTP when ``smtp_host`` is set, else the log."""
    if settings.smtp_host:
        return SmtpMailer(settings)
    return LogMailer()


def _describe_failure(exc: BaseException, settings: Settings, timeout: float) -> str:
    """One line saying what went wrong and which setting to look at."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or "invalid certificate"
        return (
            f"TLS certificate verification failed ({detail}; "
            "set FORGEHALL_SMTP_TLS_INSECURE=true for a private CA)"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if settings.smtp_implicit_tls:
            hint = "check FORGEHALL_SMTP_TLS: use starttls unless the port speaks TLS at once"
        else:
            hint = "check FORGEHALL_SMTP_TLS and FORGEHALL_SMTP_PORT"
        return f"TLS handshake failed ({reason}; {hint})"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return (
            f"authentication failed, server said {_reply(exc.smtp_code, exc.smtp_error)} "
            "(check FORGEHALL_SMTP_USERNAME/PASSWORD)"
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return (
            f"{_one_line(str(exc))} (the server may offer AUTH only over TLS: "
            "check FORGEHALL_SMTP_TLS, or unset FORGEHALL_SMTP_USERNAME)"
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refusals = "; ".join(
            f"{rcpt} ({_reply(code, text)})" for rcpt, (code, text) in exc.recipients.items()
        )
        return f"recipient refused: {refusals}"
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return (
            f"sender {exc.sender} refused, server said {_reply(exc.smtp_code, exc.smtp_error)} "
            "(check FORGEHALL_MAIL_FROM)"
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        # smtplib turns a socket error while reading a reply (a timeout, a reset) into
        # this; the underlying error says more.
        if isinstance(exc.__context__, OSError):
            return _describe_failure(exc.__context__, settings, timeout)
        return "the server closed the connection unexpectedly"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"the server said {_reply(exc.smtp_code, exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPException):
        return _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the relay running and FORGEHALL_SMTP_PORT right?)"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s (check FORGEHALL_SMTP_HOST/PORT and firewalls)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror}; check FORGEHALL_SMTP_HOST)"
    if isinstance(exc, OSError):
        return _one_line(exc.strerror or str(exc)) or type(exc).__name__
    return f"invalid message: {_one_line(str(exc))}"


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _one_line(f"{code} {text}")


def _one_line(text: str) -> str:
    return " ".join(text.split())
