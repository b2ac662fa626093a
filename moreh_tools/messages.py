"""Error lines that stay one line: what the user typed is echoed with its control characters escaped."""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with every unprintable character (newline, escape, bidi override, lone surrogate) escaped.

    Messages quote what the user typed; a newline there would split the one-line error in two, an
    escape sequence would repaint the terminal, and a bidi override would hide what follows it.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for ch in text)
