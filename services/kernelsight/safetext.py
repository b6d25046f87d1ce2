"""Strings from Redis or the kernel, made safe for a terminal.

A Redis client chooses accounting reasons, metric names and failure details; a traced process
chooses its comm. Printed through Rich as ``str`` they would be parsed as markup (``[/x]``
raises, ``[link=...]`` makes a hyperlink, ``:warning:`` an emoji), and escape sequences would
reach the terminal. So every such string is printed as a ``rich.text.Text`` built from
``printable()``: control characters (C0, DEL, C1, bidi and other format characters) shown as
``\\xNN``/``\\uNNNN`` escapes, and long strings cut with a note of how much was left out."""

from __future__ import annotations

from rich.text import Text

LIMIT = 200


def printable(v: object, limit: int = LIMIT) -> str:
    """``v`` as one line of visible characters, at most about ``limit`` of them."""
    s = str(v)
    cut = len(s) - limit if limit and len(s) > limit else 0
    if cut:
        s = s[:limit]
    out = "".join(c if c.isprintable() else
                  (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in s)
    return out + (f"…(+{cut} chars)" if cut else "")


def plain(v: object, style: str = "", limit: int = LIMIT) -> Text:
    """A Rich Text that is never parsed as markup or emoji codes."""
    return Text(printable(v, limit), style=style)


def printable_block(s: str, limit: int = 1 << 20) -> str:
    """Multi-line text (a report received from Redis): each line made printable."""
    return "\n".join(printable(line, limit) for line in s[:limit].split("\n"))
