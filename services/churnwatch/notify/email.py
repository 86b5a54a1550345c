"""
Emails over SMTP: build the message (plain text and HTML, a Message-ID derived from the
delivery id) and send it, with STARTTLS and login when the settings ask for them.

One connection per message: alerts are few, and a fresh connection never trips over a relay
that closed an idle one. Failures become `DeliveryError`s, transient or permanent by the SMTP
reply code (4xx / 5xx); the password never reaches a message or a log line.
"""

from __future__ import annotations

import smtplib
import ssl
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from churnwatch.notify.logs import Redactor
from churnwatch.notify.retry import DeliveryError, smtp_code_kind
from churnwatch.notify.settings import SmtpSettings
from churnwatch.notify.templates import EmailContent

ALERT_ID_HEADER: Final = "X-Churnwatch-Delivery-Id"


def build_message(
    content: EmailContent,
    *,
    sender: str,
    recipient: str,
    message_id: str,
    sent_at: datetime,
    delivery_id: str,
) -> EmailMessage:
    """
    A multipart/alternative email (text first, HTML second) with a fixed Message-ID, so mail
    systems that deduplicate by Message-ID drop a resend.
    """
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = content.subject
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = message_id
    message[ALERT_ID_HEADER] = delivery_id
    message.set_content(content.text)
    message.add_alternative(content.html, subtype="html")
    return message


class SmtpSender:
    """Sends one message per connection to the configured relay."""

    def __init__(self, settings: SmtpSettings, redactor: Redactor) -> None:
        self.settings = settings
        self._redact = redactor.scrub

    def _context(self) -> ssl.SSLContext:
        cafile = self.settings.tls_ca_file
        return ssl.create_default_context(cafile=None if cafile is None else str(cafile))

    def send(self, message: EmailMessage) -> None:
        """
        Sends `message`.

        Raises:
            DeliveryError: transient for 4xx replies, timeouts and connection failures;
                permanent for 5xx replies, a missing STARTTLS and certificates that fail.
        """
        s = self.settings
        if s.host is None:
            msg = "no SMTP host configured (smtp.host)"
            raise DeliveryError(msg, transient=False)
        where = f"SMTP {s.host}:{s.port}"
        smtp: smtplib.SMTP | None = None
        try:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout_seconds)
            smtp.ehlo()
            if s.starttls:
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if s.username is not None and s.password is not None:
                smtp.login(s.username, s.password.get_secret_value())
            smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            transient = all(smtp_code_kind(code) == "transient" for code in codes)
            detail = self._redact(repr(exc.recipients))
            msg = f"{where} refused the recipient: {detail}"
            raise DeliveryError(msg, transient=transient) from exc
        except smtplib.SMTPResponseException as exc:
            reply = exc.smtp_error
            text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
            msg = f"{where} answered {exc.smtp_code}: {self._redact(text)}"
            raise DeliveryError(
                msg, transient=smtp_code_kind(exc.smtp_code) == "transient"
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            msg = f"{where}: expected STARTTLS and AUTH support, got: {self._redact(str(exc))}"
            raise DeliveryError(msg, transient=False) from exc
        except ssl.SSLCertVerificationError as exc:
            msg = f"{where}: the server's certificate did not verify: {exc.verify_message}"
            raise DeliveryError(msg, transient=False) from exc
        except (smtplib.SMTPException, OSError) as exc:
            msg = f"{where}: {type(exc).__name__}: {self._redact(str(exc))}"
            raise DeliveryError(msg, transient=True) from exc
        finally:
            if smtp is not None:
                _quit(smtp)


def _quit(smtp: smtplib.SMTP) -> None:
    # The message is accepted once DATA is answered 250; a failing QUIT must not turn that
    # into a failure (and a resend), so errors here are ignored.
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()
