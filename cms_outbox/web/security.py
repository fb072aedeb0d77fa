"""Who may see the dashboard, CSRF tokens for its forms, and the headers of every answer.

Access, in order: a dashboard password (HTTP Basic, compared in constant time); else
the embedding application's ``authorize`` callable; else loopback only, by peer
address *and* ``Host`` header, so that a web page cannot reach a local dashboard
through DNS rebinding.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from typing import Any, Callable

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "Authorize",
    "check_access",
    "csrf_valid",
    "is_loopback",
    "new_csrf_token",
    "security_headers",
]

Authorize = Callable[[Mapping[str, Any]], bool]

CSRF_COOKIE = "cms_outbox_csrf"
CSRF_FIELD = "csrf_token"
# Scripts and styles only from the dashboard's own files: no inline script can run even
# if some event data escaped its escaping.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_LOOPBACK_NAMES = ("localhost",)


def security_headers(*, no_store: bool) -> list[tuple[str, str]]:
    """The headers every response carries; ``no_store`` for actions and live data."""
    headers = [
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    ]
    headers.append(("Cache-Control", "no-store" if no_store else "private, no-cache"))
    return headers


def check_access(
    environ: Mapping[str, Any], *, password: str | None, authorize: Authorize | None
) -> str | None:
    """None when the request may proceed, else why not: ``"credential"`` or ``"loopback"``."""
    if password is not None:
        return None if _password_ok(environ, password) else "credential"
    if authorize is not None:
        return None if authorize(environ) else "credential"
    peer = str(environ.get("REMOTE_ADDR") or "")
    host = _host_name(str(environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or ""))
    if is_loopback(peer) and is_loopback(host):
        return None
    return "loopback"


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` or ``localhost``."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_valid(cookie: str | None, submitted: str | None) -> bool:
    """Double submit: the form's token must equal the cookie only this site can read."""
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


def _password_ok(environ: Mapping[str, Any], password: str) -> bool:
    given = _basic_password(environ)
    return given is not None and hmac.compare_digest(given.encode(), password.encode())


def _basic_password(environ: Mapping[str, Any]) -> str | None:
    header = str(environ.get("HTTP_AUTHORIZATION") or "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


def _host_name(host: str) -> str:
    if host.startswith("["):  # [::1]:8080
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
