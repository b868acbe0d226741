"""Store URLs as they may be shown: without their passwords.

A PostgreSQL URL carries its password in one of three forms: in the user part
(`postgresql://user:pw@host/db`), as a query parameter (`?password=pw`), or as a libpq
keyword (`host=h password=pw`, quoted when it has spaces). Everything tether prints, logs or
puts in an error message or repr goes through `redact`, so none of the three is ever shown.
"""

from __future__ import annotations

import re

__all__ = ["redact"]

HIDDEN = "***"

# `scheme://user:secret@`: the secret runs to the last `@` of the URL (a password may hold
# `@` where a careless URL leaves it unescaped), and never past a space or a quote.
_USER_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*:)([^\s'\"]*)@")
# `password=secret` as a query parameter or a libpq keyword (`password = 'a b'` quoted); a
# colon ends it only where a message goes on after it (`...?password=pw: refused`).
_KEYWORD_PASSWORD = re.compile(
    r"(?i)(\b(?:ssl)?password\s*=\s*)(?!\*\*\*)('(?:[^'\\]|\\.)*'|(?:[^\s&'\";,):]|:(?!\s|$))+)"
)


def redact(text: str, url: str | None = None) -> str:
    """`text` (a URL, or a message that may contain URLs) with every password replaced by
    `***`. With `url`, the passwords of that URL are also hidden wherever they appear in
    `text` as they are (a driver's message may quote a piece of a malformed URL)."""
    if url is not None:
        for secret in _secrets(url):
            text = text.replace(secret, HIDDEN)
    if "@" in text:
        text = _USER_PASSWORD.sub(rf"\1{HIDDEN}@", text)
    if "assword" in text or "ASSWORD" in text:
        text = _KEYWORD_PASSWORD.sub(rf"\1{HIDDEN}", text)
    return text


def _secrets(url: str) -> list[str]:
    found = [m.group(2) for m in _USER_PASSWORD.finditer(url)]
    for m in _KEYWORD_PASSWORD.finditer(url):
        value = m.group(2)
        found.append(value)
        if value.startswith("'") and value.endswith("'") and len(value) > 1:
            found.append(value[1:-1])
    # A one- or two-character password replaced everywhere would mangle the message more
    # than it hides; the patterns above still hide it where it stands in a URL.
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)
