"""Secrets out of messages: what the client and batch mode put into errors and logs never carries an API key."""

from __future__ import annotations

import re

_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+\S+)")


# A run of this many characters of a secret is a fragment of it (servers echo keys partly, e.g. "sk-proj-****abcd").
_FRAGMENT_CHARS = 8


def _fragment_spans(text: str, secret: str) -> list[tuple[int, int]]:
    """Merged (start, end) spans of `text` covered by runs of at least `_FRAGMENT_CHARS` characters of `secret`."""
    pieces = {secret[i : i + _FRAGMENT_CHARS] for i in range(len(secret) - _FRAGMENT_CHARS + 1)}
    spans: list[tuple[int, int]] = []
    for start in range(len(text) - _FRAGMENT_CHARS + 1):
        if text[start : start + _FRAGMENT_CHARS] in pieces:
            end = start + _FRAGMENT_CHARS
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
    return spans


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove secrets, any run of 8+ of their characters, and anything shaped like an API key from a message."""
    secrets = tuple(s for s in secrets if s and len(s) >= 4)
    for secret in secrets:
        text = text.replace(secret, "[REDACTED]")
    text = _KEY_PATTERN.sub("[REDACTED]", text)
    for secret in secrets:
        if len(secret) >= _FRAGMENT_CHARS:
            for start, end in reversed(_fragment_spans(text, secret)):
                text = text[:start] + "[REDACTED]" + text[end:]
    return text
