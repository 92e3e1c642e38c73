"""Strings that come from model files are untrusted: bound their size and neutralise control characters."""

from __future__ import annotations

import unicodedata

MAX_LABEL_CHARS = 200


def safe_text(value: object, limit: int = MAX_LABEL_CHARS) -> str:
    """Printable, bounded text: control and bidi-override characters become visible ``\\uXXXX`` escapes.

    HTML escaping is the template engine's job (autoescape); this guards terminals, SARIF viewers and
    log files against escape sequences and right-to-left overrides that disguise a label.
    """
    text = str(value)
    truncated = len(text) > limit
    text = text[:limit]
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") and ch != " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) + ("…" if truncated else "")
