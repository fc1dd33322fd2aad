"""Keeping keys out of everything the program writes.

Servers echo keys back in error bodies, users put keys in URLs, and error messages carry both into
records and logs. `scrub` takes out the keys this process was configured with (`register`), the
keys a caller names, and anything shaped like a credential. Every JSON writer of the project
(`jsonio.dumps`) and the CLI's log and error output go through it.
"""

from __future__ import annotations

import re
from typing import Iterable

REDACTED = "***"
MIN_SECRET_CHARS = 6       # shorter values would blank ordinary words

# The secrets this process was configured with (API keys from the environment), registered by the
# settings layer, so that every writer can take them out without being handed them.
_REGISTERED: set[str] = set()

# Credential shapes: an Authorization value, OpenAI/Anthropic-style keys, Google API keys, a key or
# token in a URL's query string, and user:password@ in a URL. Each starts with a literal (no leading
# \b or case-folding), which lets the regex engine skip ahead: records run to megabytes.
_AUTHORIZATION = re.compile(r"(Bearer|bearer|BEARER|Basic|basic|BASIC)\s+[A-Za-z0-9._~+/=-]{8,}")
_KEY_SHAPES = re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{8,}|AIza[0-9A-Za-z_-]{20,}")
_QUERY_KEY = re.compile(r"([?&](?i:api[_-]?key|key|token|access[_-]?token|auth|secret|password)=)[^&#\s\"'\\]+")
_USERINFO = re.compile(r"(://)[^/@\s:\"'\\]+:[^/@\s\"'\\]+@")


def register(*values: str | None) -> None:
    """Remember configured secrets; `scrub` removes them from everything written from now on."""
    _REGISTERED.update(v for v in values if v and len(v) >= MIN_SECRET_CHARS)


_KEY_LIKE_PARAM = re.compile(r"(?i)^(api[_-]?key|key|token|access[_-]?token|auth|secret|password|sig|signature)$")


def url_secrets(url: str | None) -> list[str]:
    """The credentials a URL carries: the password of its user info (or the user name alone, the
    form some services take a token in) and the values of key-like query parameters."""
    from urllib.parse import parse_qsl, urlsplit

    if not url or "://" not in url:
        return []
    try:
        parts = urlsplit(url.strip())
        found = [parts.password or parts.username or ""]
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=False) if _KEY_LIKE_PARAM.match(k)]
    except ValueError:                 # not a URL after all (a bad port, brackets): nothing to take
        return []
    return [v for v in found if v]


def register_urls(*urls: str | None) -> None:
    """Register the credentials inside these URLs (see `url_secrets`): servers echo them back in
    their errors without the URL around them, where the URL-shaped patterns cannot see them."""
    for url in urls:
        register(*url_secrets(url))


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every registered or given secret and every credential-shaped substring replaced
    by ***. Keys are plain ASCII, so they read the same inside JSON text."""
    if not text:
        return text
    known = _REGISTERED.union(s for s in secrets if s and len(s) >= MIN_SECRET_CHARS)
    for secret in sorted(known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    # Substring tests first: they cost a millisecond on megabytes where a regex scan costs a hundred.
    if _any_in(text, ("earer", "EARER", "asic", "ASIC")):
        text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if _any_in(text, ("sk-", "AIza")):
        text = _KEY_SHAPES.sub(REDACTED, text)
    if _any_in(text, _QUERY_HINTS):
        text = _QUERY_KEY.sub(lambda m: m.group(1) + REDACTED, text)
    return _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text) if "@" in text else text


_QUERY_HINTS = tuple(f"{name}=" for word in ("key", "token", "auth", "secret", "password")
                     for name in (word, word.upper(), word.capitalize()))


def _any_in(text: str, needles: tuple[str, ...]) -> bool:
    return any(n in text for n in needles)
