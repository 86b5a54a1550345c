"""
CSM tasks over an HTTP webhook: one JSON POST per alert, with the alert id as the
`Idempotency-Key` header (a receiver that honours it makes a resend harmless), the auth header
from the settings, and a timeout. Standard library only (http.client); redirects are not
followed (a 3xx is a permanent failure: fix the URL).
"""

from __future__ import annotations

import http.client
import ssl
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from churnwatch.notify.logs import Redactor
from churnwatch.notify.retry import DeliveryError, http_status_kind
from churnwatch.notify.settings import WebhookSettings

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
USER_AGENT: Final = "churnwatch-notify/1"
_BODY_READ: Final = 8192
_BODY_EXCERPT: Final = 500


class WebhookSender:
    """Posts tasks to the configured URL."""

    def __init__(self, settings: WebhookSettings, redactor: Redactor) -> None:
        self.settings = settings
        self._redact = redactor.scrub

    def _connection(self, url: str) -> http.client.HTTPConnection:
        s = self.settings
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme == "https":
            cafile = None if s.tls_ca_file is None else str(s.tls_ca_file)
            context = ssl.create_default_context(cafile=cafile)
            return http.client.HTTPSConnection(
                host, parts.port, timeout=s.timeout_seconds, context=context
            )
        return http.client.HTTPConnection(host, parts.port, timeout=s.timeout_seconds)

    def post(self, payload: dict[str, Any], *, idempotency_key: str) -> int:
        """
        POSTs `payload` as JSON; returns the 2xx status.

        Raises:
            DeliveryError: transient for 5xx, 408, 425, 429, timeouts and connection failures;
                permanent for other statuses and certificates that fail.
        """
        s = self.settings
        if s.url is None:
            msg = "no webhook URL configured (webhook.url)"
            raise DeliveryError(msg, transient=False)
        parts = urlsplit(s.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        where = f"webhook {parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            IDEMPOTENCY_HEADER: idempotency_key,
        }
        auth = s.auth_value()
        if auth is not None:
            headers[s.auth_header] = auth
        body = orjson.dumps(payload)
        connection = self._connection(s.url)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read(_BODY_READ).decode(errors="replace")
            status = response.status
        except ssl.SSLCertVerificationError as exc:
            msg = f"{where}: the server's certificate did not verify: {exc.verify_message}"
            raise DeliveryError(msg, transient=False) from exc
        except (http.client.HTTPException, OSError) as exc:
            msg = f"{where}: {type(exc).__name__}: {self._redact(str(exc))}"
            raise DeliveryError(msg, transient=True) from exc
        finally:
            connection.close()
        kind = http_status_kind(status)
        if kind == "ok":
            return status
        # Scrub before cutting, so no part of a secret the receiver echoed back survives.
        excerpt = self._redact(answer.strip())[:_BODY_EXCERPT]
        msg = f"{where} answered {status}: {excerpt!r}"
        raise DeliveryError(msg, transient=kind == "transient")
