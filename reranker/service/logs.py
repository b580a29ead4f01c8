"""The service's logger, and client text made safe to put in a log line."""

from __future__ import annotations

import logging

logger = logging.getLogger("reranker.service")


def log_safe(text: str) -> str:
    """``text`` for a log line: control and other unprintable characters (and ``\\``)
    escaped as ``\\xNN`` / ``\\uNNNN``, so that a client cannot forge or split log lines."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)
