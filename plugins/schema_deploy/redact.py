"""Scrubbing secrets out of text: the one place passwords and tokens are masked.

A leaf: it imports nothing of the package. `errors` scrubs every message through it, and every log
line, Slack post and record that may carry a URL goes through `scrub` (or `pg.db.mask_password`, which
also masks the password of a URL that libpq echoed back in pieces).
"""
from __future__ import annotations

import re

MASK = "****"

# The password runs to the URL's last '@': an unencoded '@' in it must not leave its tail visible.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>\S+)(?P<at>@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)", re.I)


def scrub(text: str) -> str:
    """Mask passwords in URLs (`user:pw@host`) and `password=...` pairs."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)


_SQL_PASSWORD = re.compile(r"(?P<head>\bPASSWORD\s+)(?P<pw>E?'(?:[^']|'')*'|\$\w*\$.*?\$\w*\$)", re.I | re.S)


def scrub_sql(text: str) -> str:
    """`scrub`, and the literal after SQL's PASSWORD (`ALTER ROLE … PASSWORD '…'`) masked: for SQL text
    shown to a person (a statement's first line, another session's query)."""
    return scrub(_SQL_PASSWORD.sub(lambda m: f"{m['head']}'{MASK}'", text))
